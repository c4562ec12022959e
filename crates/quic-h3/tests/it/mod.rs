mod drain;
mod requests;
mod util;
