mod echo;
mod errors;
mod hardening;
mod hostile;
mod lifecycle;
mod resume;
mod util;
