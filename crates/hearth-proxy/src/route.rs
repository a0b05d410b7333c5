//! Host names to microVM ids.
//!
//! An endpoint is `<microvmId>.<domain>`: one DNS label before the domain,
//! compared case-insensitively, port ignored. Pure functions, called from
//! request tasks and from the TLS certificate resolver.

/// Lowercases `domain`, drops one trailing dot, and checks it is a DNS name
/// (labels of `[a-z0-9-]`, 1 to 63 long). `None` if it is not.
pub(crate) fn normalize_domain(domain: &str) -> Option<String> {
    let d = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    if d.is_empty() || d.len() > 253 || !d.split('.').all(is_label) {
        return None;
    }
    Some(d)
}

/// True if `s` is a DNS label we route: `[a-z0-9-]{1,63}` (lowercase).
pub(crate) fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The host part of an authority (`host`, `host:port`, `[v6]:port`),
/// lowercased, without a trailing dot.
pub(crate) fn host_of_authority(authority: &str) -> String {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal never routes; keep it whole for the message.
        rest.split(']').next().unwrap_or(rest)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

/// The microVM id a host (already through [`host_of_authority`]) routes to,
/// given the normalized `domain`.
pub(crate) fn microvm_of_host<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let id = host.strip_suffix(domain)?.strip_suffix('.')?;
    is_label(id).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hosts_route_to_their_microvm_whatever_the_case_or_port() {
        for authority in [
            "mvm-abc.localhost",
            "MVM-ABC.LocalHost",
            "mvm-abc.localhost:8443",
            "mvm-abc.localhost.",
            "mvm-abc.localhost.:443",
        ] {
            let host = host_of_authority(authority);
            assert_eq!(
                microvm_of_host(&host, "localhost"),
                Some("mvm-abc"),
                "{authority}"
            );
        }
    }

    #[test]
    fn other_hosts_do_not_route() {
        for authority in [
            "localhost",
            "localhost:80",
            ".localhost",
            "a.b.localhost",
            "mvm-abcxlocalhost",
            "mvm_abc.localhost",
            "example.com",
            "127.0.0.1:8080",
            "[::1]:443",
            "mvm-abc.localhost.evil.com",
            "",
        ] {
            let host = host_of_authority(authority);
            assert_eq!(microvm_of_host(&host, "localhost"), None, "{authority}");
        }
        let long = format!("{}.localhost", "a".repeat(64));
        assert_eq!(microvm_of_host(&long, "localhost"), None);
    }

    #[test]
    fn multi_label_domains_route() {
        let d = normalize_domain("Hearth.Example.COM.").unwrap();
        assert_eq!(d, "hearth.example.com");
        assert_eq!(microvm_of_host("m1.hearth.example.com", &d), Some("m1"));
        assert_eq!(microvm_of_host("m1.example.com", &d), None);
    }

    #[test]
    fn bad_domains_are_refused() {
        for d in ["", ".", "a..b", "under_score", "sp ace"] {
            assert_eq!(normalize_domain(d), None, "{d:?}");
        }
    }
}
