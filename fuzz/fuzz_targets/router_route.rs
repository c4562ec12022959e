//! The router's whole routing step (header, table, accept path, Retry, stateless reset,
//! version negotiation) must survive any datagram.
#![no_main]

use std::sync::OnceLock;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use quic_io::__private::RouterHarness;
use quic_io::{ServerParams, TlsConfig};

fn router() -> &'static Mutex<RouterHarness> {
    static ROUTER: OnceLock<Mutex<RouterHarness>> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let identity = TlsConfig::self_signed(&["localhost"]).expect("certificate");
        let params = ServerParams::new(identity.config, &[b"h3"]);
        Mutex::new(RouterHarness::new(params).expect("router"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&host, datagram)) = data.split_first() else {
        return;
    };
    let from = std::net::SocketAddr::from(([127, 0, 3, host], 4433));
    router().lock().unwrap().route(datagram, from);
});
