mod browser_fields;
mod drain;
mod extended;
mod hardening;
mod props;
mod requests;
mod util;
