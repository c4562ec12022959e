mod echo;
mod errors;
mod hardening;
mod hostile;
mod lifecycle;
mod props;
mod resume;
mod util;
