mod echo;
mod errors;
mod hostile;
mod lifecycle;
mod resume;
mod util;
