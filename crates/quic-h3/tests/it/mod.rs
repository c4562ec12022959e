mod requests;
mod util;
