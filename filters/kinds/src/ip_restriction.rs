//! The `ip_restriction` filter: allow and deny lists of networks (CIDR, IPv4 and IPv6)
//! on the client address after `trusted_proxies` resolution (`FilterCtx::client_ip`).
//!
//! ```yaml
//! filters:
//!   - ip_restriction:
//!       allow: [10.0.0.0/8, "2001:db8::/32", 127.0.0.1]
//!       deny: [10.0.13.0/24]
//! ```
//!
//! Deny wins over allow. With an `allow` list, an address outside it is refused; with
//! only a `deny` list, every other address passes. A refused request gets 403. A request
//! whose client address is unknown is refused when there is an `allow` list (fail
//! closed) and passes a deny-only list.
//!
//! The lists are compiled once into sorted, merged address ranges (one list for IPv4,
//! one for IPv6); a lookup is a binary search, O(log n) with no allocation. An
//! IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is checked as the IPv4 address, in the
//! rules and in the client address alike.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::registry::{parse, BuildCtx, Kind, SpecError};
use sluice_core::filter::{Filter, FilterCtx, Flow, Phases, Reject, RejectKind, RequestView};

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "ip_restriction",
    answers: false,
    build,
    redact: crate::registry::shown_as::<IpRestrictionSpec>,
    schema: Some(crate::registry::schema_of::<IpRestrictionSpec>),
};

/// Allow and deny lists. At least one must be non-empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpRestrictionSpec {
    /// Networks allowed (`10.0.0.0/8`, `::1/128`, or a bare address for one host). When
    /// non-empty, every other address is refused. Default: empty (no allow list).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Networks refused, whatever `allow` says. Default: empty.
    #[serde(default)]
    pub deny: Vec<String>,
    /// The message of the 403 response. Default: `client address not allowed`.
    #[serde(default = "default_message")]
    pub message: String,
}

fn default_message() -> String {
    "client address not allowed".into()
}

fn build(spec: &serde_json::Value, _ctx: &BuildCtx<'_>) -> Result<Arc<dyn Filter>, Vec<SpecError>> {
    let spec: IpRestrictionSpec = parse(spec)?;
    Ok(Arc::new(IpRestriction::new(&spec)?))
}

/// Parses a network or a bare address (one host), e.g. `10.0.0.0/8`, `::1`. Host bits
/// below the prefix are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "{s:?} is not a network (`10.0.0.0/8`, `2001:db8::/32`) or an address"
    ))
}

/// A set of address ranges, sorted and merged, for lookups by binary search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpSet {
    /// Compiles `nets` (inclusive ranges, overlapping and adjacent ones merged).
    pub fn new(nets: &[IpNet]) -> IpSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => {
                    let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                    // The IPv4-mapped part of a rule is checked as IPv4.
                    const MAPPED: u128 = 0xffff_0000_0000;
                    const MAPPED_END: u128 = 0xffff_ffff_ffff;
                    if lo <= MAPPED_END && hi >= MAPPED {
                        let a = lo.max(MAPPED) as u32;
                        let b = hi.min(MAPPED_END) as u32;
                        v4.push((a, b));
                    }
                    v6.push((lo, hi));
                }
            }
        }
        IpSet {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }
}

/// An IPv4-mapped IPv6 address as IPv4; any other address unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn merge<T: Ord + Copy + num::Step>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        if let Some(last) = out.last_mut() {
            if lo <= last.1 || T::next(last.1) == Some(lo) {
                last.1 = last.1.max(hi);
                continue;
            }
        }
        out.push((lo, hi));
    }
    out
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The first range that ends at or after x; x is in the set if that range starts at or
    // before x.
    let i = ranges.partition_point(|&(_, hi)| hi < x);
    ranges.get(i).is_some_and(|&(lo, _)| lo <= x)
}

/// The successor of an address, for merging adjacent ranges.
mod num {
    /// An unsigned integer with a checked successor.
    pub trait Step: Sized {
        /// `self + 1`, or `None` at the maximum.
        fn next(self) -> Option<Self>;
    }
    impl Step for u32 {
        fn next(self) -> Option<u32> {
            self.checked_add(1)
        }
    }
    impl Step for u128 {
        fn next(self) -> Option<u128> {
            self.checked_add(1)
        }
    }
}

/// What the rules decide for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The address may pass.
    Allowed,
    /// The address is in the deny list.
    Denied,
    /// There is an allow list and the address is not in it (or is unknown).
    NotAllowed,
}

/// The `ip_restriction` filter: its compiled lists.
#[derive(Debug, Clone)]
pub struct IpRestriction {
    allow: IpSet,
    deny: IpSet,
    message: String,
}

impl IpRestriction {
    /// Validates the spec (every entry, errors at `allow[i]` / `deny[i]`) and compiles it.
    pub fn new(spec: &IpRestrictionSpec) -> Result<IpRestriction, Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut list = |field: &str, entries: &[String]| {
            let mut nets = Vec::with_capacity(entries.len());
            for (i, e) in entries.iter().enumerate() {
                match parse_net(e) {
                    Ok(n) => nets.push(n),
                    Err(m) => errors.push(SpecError::at(format!("{field}[{i}]"), m)),
                }
            }
            IpSet::new(&nets)
        };
        let allow = list("allow", &spec.allow);
        let deny = list("deny", &spec.deny);
        if spec.allow.is_empty() && spec.deny.is_empty() {
            errors.push(SpecError::at("", "needs at least one entry in `allow` or `deny`"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(IpRestriction {
            allow,
            deny,
            message: spec.message.clone(),
        })
    }

    /// The verdict for client address `ip` (`None`: unknown). Deny wins over allow.
    pub fn check(&self, ip: Option<IpAddr>) -> Verdict {
        match ip {
            Some(ip) if self.deny.contains(ip) => Verdict::Denied,
            Some(ip) if self.allow.is_empty() || self.allow.contains(ip) => Verdict::Allowed,
            None if self.allow.is_empty() => Verdict::Allowed,
            _ => Verdict::NotAllowed,
        }
    }
}

#[async_trait]
impl Filter for IpRestriction {
    fn kind(&self) -> &'static str {
        "ip_restriction"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            ..Phases::default()
        }
    }

    async fn on_request(&self, _req: &RequestView<'_>, ctx: &mut FilterCtx) -> Flow {
        match self.check(ctx.client_ip) {
            Verdict::Allowed => Flow::Continue,
            Verdict::Denied | Verdict::NotAllowed => {
                Flow::Reject(Reject::new(RejectKind::Forbidden, self.message.clone()))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::build_for_test;
    use crate::test_support::block_on;

    fn rules(allow: &[&str], deny: &[&str]) -> IpRestriction {
        IpRestriction::new(&IpRestrictionSpec {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            message: default_message(),
        })
        .unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn allow_list_admits_only_its_networks() {
        let r = rules(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"], &[]);
        assert_eq!(r.check(ip("10.1.2.3")), Verdict::Allowed);
        assert_eq!(r.check(ip("10.255.255.255")), Verdict::Allowed);
        assert_eq!(r.check(ip("11.0.0.0")), Verdict::NotAllowed);
        assert_eq!(r.check(ip("9.255.255.255")), Verdict::NotAllowed);
        assert_eq!(r.check(ip("192.168.1.7")), Verdict::Allowed);
        assert_eq!(r.check(ip("192.168.1.8")), Verdict::NotAllowed);
        assert_eq!(r.check(ip("2001:db8:ffff::1")), Verdict::Allowed);
        assert_eq!(r.check(ip("2001:db9::1")), Verdict::NotAllowed);
        assert_eq!(r.check(None), Verdict::NotAllowed, "unknown address fails closed");
    }

    #[test]
    fn deny_wins_over_allow() {
        let r = rules(&["10.0.0.0/8", "::/0"], &["10.0.13.0/24", "::1"]);
        assert_eq!(r.check(ip("10.0.13.200")), Verdict::Denied);
        assert_eq!(r.check(ip("10.0.14.1")), Verdict::Allowed);
        assert_eq!(r.check(ip("::1")), Verdict::Denied);
        assert_eq!(r.check(ip("::2")), Verdict::Allowed);
    }

    #[test]
    fn deny_only_admits_the_rest() {
        let r = rules(&[], &["203.0.113.0/24"]);
        assert_eq!(r.check(ip("203.0.113.5")), Verdict::Denied);
        assert_eq!(r.check(ip("203.0.114.5")), Verdict::Allowed);
        assert_eq!(r.check(None), Verdict::Allowed);
    }

    #[test]
    fn ipv4_mapped_addresses_are_checked_as_ipv4() {
        let r = rules(&["127.0.0.0/8"], &["::ffff:127.0.0.9"]);
        assert_eq!(r.check(ip("::ffff:127.0.0.1")), Verdict::Allowed);
        assert_eq!(r.check(ip("127.0.0.9")), Verdict::Denied);
        assert_eq!(r.check(ip("::1")), Verdict::NotAllowed);
    }

    #[test]
    fn ranges_are_merged_and_found_at_their_edges() {
        let set = IpSet::new(&[
            parse_net("10.0.0.0/24").unwrap(),
            parse_net("10.0.1.0/24").unwrap(),
            parse_net("10.0.0.128/25").unwrap(),
            parse_net("0.0.0.0/32").unwrap(),
            parse_net("255.255.255.255/32").unwrap(),
            parse_net("10.1.2.3/8").unwrap(),
        ]);
        assert_eq!(
            set.v4,
            vec![(0, 0), (0x0a00_0000, 0x0aff_ffff), (u32::MAX, u32::MAX)]
        );
        for (a, want) in [
            ("0.0.0.0", true),
            ("0.0.0.1", false),
            ("9.255.255.255", false),
            ("10.0.0.0", true),
            ("10.200.0.0", true),
            ("11.0.0.0", false),
            ("255.255.255.254", false),
            ("255.255.255.255", true),
        ] {
            assert_eq!(set.contains(a.parse().unwrap()), want, "{a}");
        }
        let all6 = IpSet::new(&[parse_net("::/0").unwrap()]);
        assert!(all6.contains("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()));
        assert!(!IpSet::default().contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn matches_a_linear_scan_on_random_rules() {
        use rand::Rng;
        let mut rng = rand::rng();
        for _ in 0..50 {
            let nets: Vec<IpNet> = (0..rng.random_range(1..20))
                .map(|_| {
                    let a: u32 = rng.random_range(0..4096) << 20;
                    let len = rng.random_range(4..=32);
                    IpNet::V4(ipnet::Ipv4Net::new(a.into(), len).unwrap().trunc())
                })
                .collect();
            let set = IpSet::new(&nets);
            for _ in 0..200 {
                let x: u32 = rng.random_range(0..4096) << 20 | rng.random_range(0..(1 << 20));
                let addr = IpAddr::V4(x.into());
                let linear = nets.iter().any(|n| n.contains(&addr));
                assert_eq!(set.contains(addr), linear, "{addr} in {nets:?}");
            }
        }
    }

    #[test]
    fn errors_name_each_bad_entry() {
        let errs = build_for_test(
            build,
            &serde_json::json!({"allow": ["10.0.0.0/8", "10.0.0.0/33", "nope"], "deny": ["::1/129"]}),
        )
        .err()
        .unwrap();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["allow[1]", "allow[2]", "deny[0]"], "{errs:?}");
        assert!(errs[2].message.contains("is not a network"), "{errs:?}");
        let errs = build_for_test(build, &serde_json::json!({})).err().unwrap();
        assert!(errs[0].message.contains("at least one"), "{errs:?}");
        let errs = build_for_test(build, &serde_json::json!({"alow": []}))
            .err()
            .unwrap();
        assert_eq!(errs[0].path, "alow", "{errs:?}");
    }

    #[test]
    fn a_refused_address_gets_forbidden() {
        let f = build_for_test(
            build,
            &serde_json::json!({"deny": ["127.0.0.1"], "message": "go away"}),
        )
        .unwrap();
        let headers = http::HeaderMap::new();
        let req = RequestView {
            method: &http::Method::GET,
            scheme: "http",
            host: None,
            authority: None,
            path: "/",
            query: None,
            headers: &headers,
            client_ip: ip("127.0.0.1"),
        };
        let mut ctx = FilterCtx {
            client_ip: ip("127.0.0.1"),
            ..FilterCtx::default()
        };
        match block_on(f.on_request(&req, &mut ctx)) {
            Flow::Reject(r) => {
                assert_eq!(r.kind, RejectKind::Forbidden);
                assert_eq!(r.message, "go away");
            }
            other => panic!("{other:?}"),
        }
        ctx.client_ip = ip("127.0.0.2");
        assert!(matches!(block_on(f.on_request(&req, &mut ctx)), Flow::Continue));
    }
}
