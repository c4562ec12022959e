mod drain;
mod extended;
mod requests;
mod util;
