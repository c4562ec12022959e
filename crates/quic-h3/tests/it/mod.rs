mod drain;
mod extended;
mod hardening;
mod requests;
mod util;
