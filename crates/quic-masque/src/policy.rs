//! Which targets a proxy reaches: by default none inside the proxy's own networks.

use std::net::IpAddr;

use ipnet::IpNet;

/// The ranges a proxy refuses unless a configuration allows them: the proxy's host
/// (loopback, unspecified), private networks (RFC 1918, RFC 6598 shared space, IPv6
/// unique local), link-local, multicast and broadcast. A proxy open to them would let
/// any client reach services that trust their network.
pub const DENIED_BY_DEFAULT: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// The targets a proxy may reach: any address outside [`DENIED_BY_DEFAULT`], and
/// those inside the ranges [`allow`](Self::allow)ed.
#[derive(Debug, Clone)]
pub struct TargetPolicy {
    denied: Vec<IpNet>,
    allowed: Vec<IpNet>,
}

impl Default for TargetPolicy {
    fn default() -> Self {
        Self {
            denied: DENIED_BY_DEFAULT
                .iter()
                .map(|n| n.parse().expect("valid ranges"))
                .collect(),
            allowed: Vec::new(),
        }
    }
}

impl TargetPolicy {
    /// Allows the targets in `net`, denied by default or not.
    pub fn allow(&mut self, net: IpNet) -> &mut Self {
        self.allowed.push(net.trunc());
        self
    }

    /// Whether `ip` may be reached. An IPv4-mapped IPv6 address is judged as the
    /// IPv4 address it holds.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allowed.iter().any(|n| n.contains(&ip)) || !self.denied.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_addresses_are_refused_unless_allowed() {
        let mut p = TargetPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!p.permits(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["192.0.2.1", "8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(p.permits(ip.parse().unwrap()), "{ip}");
        }
        p.allow("127.0.0.1/32".parse().unwrap());
        assert!(p.permits("127.0.0.1".parse().unwrap()));
        assert!(p.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!p.permits("127.0.0.2".parse().unwrap()));
    }
}
