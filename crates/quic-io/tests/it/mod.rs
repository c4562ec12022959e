mod echo;
mod util;
