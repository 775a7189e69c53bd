//! The address guard: which hosts a webhook may call, so that a customer's
//! URL cannot reach the service's own network (server-side request
//! forgery).
//!
//! A URL passes when it is `https` and its host is, or resolves only to,
//! globally reachable addresses: not loopback, private (RFC 1918, IPv6
//! unique-local), link-local (the cloud metadata address 169.254.169.254
//! among them), unspecified, broadcast, shared (100.64.0.0/10),
//! documentation, benchmarking, multicast or reserved, nor an IPv6 form
//! that embeds such an IPv4 address (`::ffff:127.0.0.1`). Every address a
//! name resolves to must pass, not just the first, since the connection
//! may use any of them. Insecure mode (`MAESTRO_WEBHOOKS_ALLOW_INSECURE`)
//! lifts both rules, for development and tests.
//!
//! The check runs at registration ([`AddressGuard::check_url`]) and again
//! at every delivery, on the addresses the delivery then connects to (see
//! the sender), so that a DNS answer that changes after registration is
//! caught.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use domain::{InvalidWebhookUrl, WebhookUrl};
use reqwest::Url;

/// How long [`AddressGuard::check_url`] waits for the host to resolve.
const CHECK_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Decides which webhook URLs may be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressGuard {
    allow_insecure: bool,
}

/// Why a URL may not be called, or could not be resolved.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Not `https` (and insecure webhooks are not allowed).
    Scheme,
    /// The URL does not parse, or names no host.
    Malformed,
    /// The host is, or resolves to, a forbidden address.
    Forbidden {
        /// The host as the URL names it.
        host: String,
        /// The forbidden address.
        ip: IpAddr,
        /// What kind of address it is.
        kind: &'static str,
    },
    /// The name did not resolve, or to no address: nothing to call yet.
    Unresolved {
        /// The host as the URL names it.
        host: String,
        /// Why, for the log.
        reason: String,
    },
}

/// Whether `host` is `localhost` or a name under it.
fn is_localhost(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

impl fmt::Display for Refusal {
    // Names the host, never the path or query, which may hold a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scheme => f.write_str("the url is not https"),
            Self::Malformed => f.write_str("the url does not name a host"),
            Self::Forbidden { host, ip, kind } => {
                if host.trim_matches(['[', ']']) == ip.to_string() {
                    write!(f, "the host {host} is a {kind} address")
                } else {
                    write!(f, "the host {host} resolves to {ip}, a {kind} address")
                }
            }
            Self::Unresolved { host, reason } => {
                write!(f, "the host {host} did not resolve: {reason}")
            }
        }
    }
}

/// Where a checked URL's connection may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The host as the URL names it, and as the HTTP client will look it up.
    pub(crate) host: String,
    /// Whether the host is an IP address (nothing to resolve).
    pub(crate) is_ip: bool,
    /// The addresses the connection may use, all checked, with the URL's
    /// port.
    pub(crate) addrs: Vec<SocketAddr>,
}

impl AddressGuard {
    /// A guard; `allow_insecure` lifts the `https` and address rules.
    pub fn new(allow_insecure: bool) -> Self {
        Self { allow_insecure }
    }

    /// Whether the rules are lifted.
    pub fn allows_insecure(&self) -> bool {
        self.allow_insecure
    }

    /// Checks a URL at registration: its scheme, and the addresses its host
    /// is or resolves to now.
    ///
    /// A name that does not resolve (yet) passes: there is nothing it
    /// could reach, and every delivery resolves and checks it again before
    /// connecting.
    ///
    /// # Errors
    /// [`InvalidWebhookUrl::Scheme`] for a URL that is not `https`;
    /// [`InvalidWebhookUrl::Malformed`] for one without a usable host;
    /// [`InvalidWebhookUrl::ForbiddenAddress`] when the host is, or
    /// resolves to, an address webhooks may not call.
    pub async fn check_url(&self, url: &WebhookUrl) -> Result<(), InvalidWebhookUrl> {
        let url = Url::parse(url.as_str()).map_err(|_| InvalidWebhookUrl::Malformed)?;
        let checked = tokio::time::timeout(CHECK_RESOLVE_TIMEOUT, self.resolve(&url)).await;
        match checked {
            Ok(Ok(_)) | Ok(Err(Refusal::Unresolved { .. })) | Err(_) => Ok(()),
            Ok(Err(Refusal::Scheme)) => Err(InvalidWebhookUrl::Scheme),
            Ok(Err(Refusal::Malformed)) => Err(InvalidWebhookUrl::Malformed),
            Ok(Err(Refusal::Forbidden { .. })) => Err(InvalidWebhookUrl::ForbiddenAddress),
        }
    }

    /// Checks `url`'s scheme, resolves its host and checks every address:
    /// the addresses its connection may use.
    pub(crate) async fn resolve(&self, url: &Url) -> Result<Target, Refusal> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_insecure => {}
            _ => return Err(Refusal::Scheme),
        }
        let port = url.port_or_known_default().ok_or(Refusal::Malformed)?;
        let host = url.host_str().ok_or(Refusal::Malformed)?.to_owned();
        // The URL library has read the host the way the HTTP client will
        // (`0x7f.1` is 127.0.0.1, `[::ffff:7f00:1]` an IPv6 address), and
        // the client connects to an IP host as written, without resolving
        // it, so what is checked here is what is called.
        let literal = host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(&host)
            .parse::<IpAddr>()
            .ok();
        // `localhost` and every name under it are loopback whatever a
        // resolver says (RFC 6761), in any case and with a final dot.
        if !self.allow_insecure && literal.is_none() && is_localhost(&host) {
            return Err(Refusal::Forbidden {
                host,
                ip: IpAddr::from([127, 0, 0, 1]),
                kind: "loopback",
            });
        }
        let (is_ip, addrs) = match literal {
            Some(ip) => (true, vec![SocketAddr::new(ip, port)]),
            None => {
                let resolved = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|err| Refusal::Unresolved {
                        host: host.clone(),
                        reason: err.to_string(),
                    })?;
                // In the resolver's order of preference, once each.
                let mut addrs: Vec<SocketAddr> = Vec::new();
                for addr in resolved {
                    if !addrs.contains(&addr) {
                        addrs.push(addr);
                    }
                }
                if addrs.is_empty() {
                    return Err(Refusal::Unresolved {
                        host,
                        reason: "no address".to_owned(),
                    });
                }
                (false, addrs)
            }
        };
        if !self.allow_insecure {
            for addr in &addrs {
                if let Some(kind) = forbidden(addr.ip()) {
                    return Err(Refusal::Forbidden {
                        host,
                        ip: addr.ip(),
                        kind,
                    });
                }
            }
        }
        Ok(Target { host, is_ip, addrs })
    }
}

/// Whether webhooks may not call `ip` (unless insecure webhooks are
/// allowed): anything but a globally reachable unicast address.
pub fn is_forbidden(ip: IpAddr) -> bool {
    forbidden(ip).is_some()
}

/// What kind of forbidden address `ip` is, or `None` when it is globally
/// reachable.
fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => forbidden_v6(ip),
    }
}

/// Whether `ip` is in `network/len`.
fn in_v4(ip: Ipv4Addr, network: [u8; 4], len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(network)) & mask
}

/// The IANA IPv4 special-purpose ranges that are not globally reachable,
/// and the rest of what is not unicast.
fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u32, &str)] = &[
        // "This network"; 0.0.0.0 itself is the unspecified address.
        ([0, 0, 0, 0], 8, "unspecified"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "shared"),
        ([127, 0, 0, 0], 8, "loopback"),
        // Cloud metadata services (169.254.169.254) live here.
        ([169, 254, 0, 0], 16, "link-local"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "reserved"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 88, 99, 0], 24, "reserved"),
        ([192, 168, 0, 0], 16, "private"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([255, 255, 255, 255], 32, "broadcast"),
        ([240, 0, 0, 0], 4, "reserved"),
    ];
    RANGES
        .iter()
        .find(|(network, len, _)| in_v4(ip, *network, *len))
        .map(|(_, _, kind)| *kind)
}

/// Whether `ip` is in `network/len`.
fn in_v6(ip: Ipv6Addr, network: [u16; 8], len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(network)) & mask
}

/// Only global unicast (2000::/3) passes, less its special-purpose ranges;
/// forms that embed an IPv4 address are judged by that address.
fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // ::ffff:a.b.c.d reaches a.b.c.d on a dual-stack socket.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    // The deprecated IPv4-compatible form ::a.b.c.d: never routed, and
    // some stacks still map it to a.b.c.d.
    if in_v6(ip, [0; 8], 96) {
        return Some("reserved");
    }
    // NAT64 (RFC 6052): 64:ff9b::a.b.c.d is a.b.c.d through a translator,
    // the way an IPv6-only host reaches the IPv4 internet.
    if in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        let [.., a, b, c, d] = ip.octets();
        return forbidden_v4(Ipv4Addr::new(a, b, c, d));
    }
    const RANGES: &[([u16; 8], u32, &str)] = &[
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "private"),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local"),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local"),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast"),
        ([0x2001, 0x0db8, 0, 0, 0, 0, 0, 0], 32, "documentation"),
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation"),
        // IETF protocol assignments: Teredo (which hides an IPv4 address),
        // benchmarking, ORCHID and the like.
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "reserved"),
        // 6to4 hides an IPv4 address too, and is deprecated.
        ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "reserved"),
    ];
    if let Some((_, _, kind)) = RANGES
        .iter()
        .find(|(network, len, _)| in_v6(ip, *network, *len))
    {
        return Some(kind);
    }
    if !in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
        return Some("reserved");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(text: &str) -> Option<&'static str> {
        forbidden(IpAddr::V4(text.parse().unwrap()))
    }

    fn v6(text: &str) -> Option<&'static str> {
        forbidden(IpAddr::V6(text.parse().unwrap()))
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.0",
            "198.20.0.0",
            "223.255.255.255",
        ] {
            assert_eq!(v4(ip), None, "{ip}");
        }
        for ip in [
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(v6(ip), None, "{ip}");
        }
    }

    #[test]
    fn ipv4_addresses_that_are_not_globally_reachable_are_forbidden() {
        for (ip, kind) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("100.64.0.1", "shared"),
            ("100.127.255.255", "shared"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "link-local"),
            ("169.254.0.1", "link-local"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.8", "reserved"),
            ("192.0.2.1", "documentation"),
            ("192.88.99.1", "reserved"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "broadcast"),
        ] {
            assert_eq!(v4(ip), Some(kind), "{ip}");
        }
    }

    #[test]
    fn ipv6_addresses_that_are_not_global_unicast_are_forbidden() {
        for (ip, kind) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "private"),
            ("fd12:3456:789a::1", "private"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001::1", "reserved"),
            ("2001:2::1", "reserved"),
            ("2002:7f00:1::1", "reserved"),
            ("100::1", "reserved"),
            ("64:ff9b:1::1", "reserved"),
            ("5f00::1", "reserved"),
            ("4000::1", "reserved"),
        ] {
            assert_eq!(v6(ip), Some(kind), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_of_forbidden_ipv4_addresses_are_forbidden() {
        for (ip, kind) in [
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:7f00:1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:0.0.0.0", "unspecified"),
            // IPv4-compatible, whatever the address.
            ("::127.0.0.1", "reserved"),
            ("::10.0.0.1", "reserved"),
            ("::8.8.8.8", "reserved"),
            // NAT64 of a private or loopback address.
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b::c0a8:101", "private"),
        ] {
            assert_eq!(v6(ip), Some(kind), "{ip}");
        }
    }

    fn url(raw: &str) -> WebhookUrl {
        WebhookUrl::parse(raw, true).unwrap()
    }

    #[tokio::test]
    async fn urls_with_forbidden_literal_addresses_are_refused() {
        let guard = AddressGuard::new(false);
        for raw in [
            "https://127.0.0.1/hook",
            "https://127.1/hook",
            "https://0x7f.1/hook",
            "https://2130706433/hook",
            "https://[::1]/hook",
            "https://[::ffff:127.0.0.1]:8443/hook",
            "https://169.254.169.254/latest/meta-data/",
            "https://[fd00::1]/hook",
            "https://0.0.0.0/hook",
            "https://10.1.2.3/hook",
        ] {
            assert_eq!(
                guard.check_url(&url(raw)).await,
                Err(InvalidWebhookUrl::ForbiddenAddress),
                "{raw}"
            );
        }
    }

    #[tokio::test]
    async fn localhost_and_names_under_it_are_loopback_without_a_resolver() {
        let guard = AddressGuard::new(false);
        for raw in [
            "https://LOCALHOST./",
            "https://Localhost/",
            "https://api.localhost/",
            "https://a.b.LOCALHOST./",
        ] {
            assert_eq!(
                guard.check_url(&url(raw)).await,
                Err(InvalidWebhookUrl::ForbiddenAddress),
                "{raw}"
            );
        }
        // A name that merely contains the word is not under it.
        assert!(!is_localhost("localhost.example.com"));
        assert!(!is_localhost("notlocalhost"));
        assert!(
            AddressGuard::new(true)
                .check_url(&url("https://LOCALHOST./"))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        let guard = AddressGuard::new(false);
        assert_eq!(
            guard.check_url(&url("https://localhost:8443/hook")).await,
            Err(InvalidWebhookUrl::ForbiddenAddress)
        );
        let refusal = guard
            .resolve(&Url::parse("https://localhost/hook?token=s3cr3t").unwrap())
            .await
            .unwrap_err();
        let text = refusal.to_string();
        assert!(
            text.starts_with("the host localhost resolves to ")
                && text.ends_with("a loopback address"),
            "{text}"
        );
        assert!(!text.contains("s3cr3t"), "{text}");
    }

    #[tokio::test]
    async fn http_is_refused_unless_insecure_webhooks_are_allowed() {
        assert_eq!(
            AddressGuard::new(false)
                .check_url(&url("http://93.184.215.14/hook"))
                .await,
            Err(InvalidWebhookUrl::Scheme)
        );
        assert_eq!(
            AddressGuard::new(true)
                .check_url(&url("http://93.184.215.14/hook"))
                .await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn insecure_mode_lifts_the_address_rules() {
        let guard = AddressGuard::new(true);
        for raw in ["http://127.0.0.1:9/", "https://localhost/", "http://[::1]/"] {
            assert_eq!(guard.check_url(&url(raw)).await, Ok(()), "{raw}");
        }
    }

    #[tokio::test]
    async fn public_literal_addresses_pass_and_keep_the_urls_port() {
        let guard = AddressGuard::new(false);
        assert_eq!(guard.check_url(&url("https://8.8.8.8/hook")).await, Ok(()));
        let target = guard
            .resolve(&Url::parse("https://[2606:4700:4700::1111]:8443/").unwrap())
            .await
            .unwrap();
        assert!(target.is_ip);
        assert_eq!(
            target.addrs,
            ["[2606:4700:4700::1111]:8443".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_passes_registration() {
        // `.invalid` never resolves (RFC 6761); deliveries check again.
        let guard = AddressGuard::new(false);
        assert_eq!(
            guard
                .check_url(&url("https://hooks.example.invalid/"))
                .await,
            Ok(())
        );
        assert!(matches!(
            guard
                .resolve(&Url::parse("https://hooks.example.invalid/").unwrap())
                .await,
            Err(Refusal::Unresolved { .. })
        ));
    }
}
