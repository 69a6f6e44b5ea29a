//! Which network addresses Tandem may send requests to: only globally reachable unicast, by
//! the IANA special-purpose registries, unless a deployment allows private targets (tests, mock
//! CRMs on loopback). Used for outbound webhook endpoints and CRM connections alike: checked on
//! the literal host of every URL, and again on every address a name resolves to
//! ([`PublicOnlyResolver`]), so DNS cannot point a public name inside.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether an address is globally reachable unicast, judged by the IANA IPv4 and IPv6
/// Special-Purpose Address Registries (a range is refused unless the registry marks it
/// globally reachable; multicast and reserved space too). IPv6 forms that carry an IPv4
/// address are unwrapped and judged as IPv4 (IPv4-mapped `::ffff:a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d`), or refused outright where the embedded address cannot be trusted to be
/// what the packet reaches (IPv4-compatible `::a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`,
/// 6to4 `2002::/16`, Teredo and the rest of `2001::/23`).
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// Non-global IPv4 ranges: the IANA IPv4 Special-Purpose Address Registry entries not marked
/// globally reachable, plus multicast (224/4) and the limited broadcast.
const NON_GLOBAL_V4: [(u32, u8); 16] = [
    (0x0000_0000, 8),  // 0.0.0.0/8 "this network"
    (0x0A00_0000, 8),  // 10.0.0.0/8 private
    (0x6440_0000, 10), // 100.64.0.0/10 shared address space
    (0x7F00_0000, 8),  // 127.0.0.0/8 loopback
    (0xA9FE_0000, 16), // 169.254.0.0/16 link-local
    (0xAC10_0000, 12), // 172.16.0.0/12 private
    (0xC000_0000, 24), // 192.0.0.0/24 IETF protocol assignments
    (0xC000_0200, 24), // 192.0.2.0/24 documentation (TEST-NET-1)
    (0xC058_6300, 24), // 192.88.99.0/24 deprecated 6to4 relay anycast
    (0xC0A8_0000, 16), // 192.168.0.0/16 private
    (0xC612_0000, 15), // 198.18.0.0/15 benchmarking
    (0xC633_6400, 24), // 198.51.100.0/24 documentation (TEST-NET-2)
    (0xCB00_7100, 24), // 203.0.113.0/24 documentation (TEST-NET-3)
    (0xE000_0000, 4),  // 224.0.0.0/4 multicast
    (0xF000_0000, 4),  // 240.0.0.0/4 reserved
    (0xFFFF_FFFF, 32), // 255.255.255.255 limited broadcast
];

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let ip = u32::from(v4);
    // Every prefix length is 1..=32, so the shift stays in range.
    !NON_GLOBAL_V4.iter().any(|&(net, len)| {
        let mask = u32::MAX << (32 - len);
        ip & mask == net & mask
    })
}

/// Non-global ranges inside 2000::/3 (global unicast), from the IANA IPv6 Special-Purpose
/// Address Registry; everything outside 2000::/3 is refused anyway (loopback, unspecified,
/// `::/96`, `::ffff:0:0/96`, `64:ff9b::/96` handled first, `100::/64` discard, `fc00::/7`
/// unique-local, `fe80::/10` link-local, `fec0::/10` site-local, `ff00::/8` multicast).
const NON_GLOBAL_V6: [(u128, u8); 5] = [
    (0x2001_0000 << 96, 23), // 2001::/23 IETF protocol assignments (Teredo, ORCHID, …)
    (0x2001_0db8 << 96, 32), // 2001:db8::/32 documentation
    (0x2002_0000 << 96, 16), // 2002::/16 6to4 (embeds an IPv4 address)
    (0x3fff_0000 << 96, 20), // 3fff::/20 documentation
    (0x5f00_0000 << 96, 16), // 5f00::/16 segment routing SIDs (outside 2000::/3 too)
];

fn is_public_v6(v6: Ipv6Addr) -> bool {
    let bits = u128::from(v6);
    // Every prefix length used is 1..=128, so the shift stays in range.
    let prefix = |net: u128, len: u8| {
        let mask = u128::MAX << (128 - len);
        bits & mask == net & mask
    };
    // IPv4-mapped: the packet goes to the embedded IPv4 address.
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // NAT64 well-known prefix: a translator sends it to the embedded IPv4 address.
    if prefix(0x0064_ff9b << 96, 96) {
        return is_public_v4(Ipv4Addr::from(bits as u32));
    }
    // Global unicast only, without the special ranges inside it.
    prefix(0x2000 << 112, 3) && !NON_GLOBAL_V6.iter().any(|&(net, len)| prefix(net, len))
}

/// Resolves names and keeps only public addresses (a name with none fails to resolve).
pub struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| is_public_ip(addr.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `url`'s host, when it is a literal address, is public (names are judged when they
/// resolve, by [`PublicOnlyResolver`]).
pub fn literal_host_is_public(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => is_public_ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_public_ip(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name != "localhost" && !name.ends_with(".localhost")
        }
        None => false,
    }
}
