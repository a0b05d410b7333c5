//! Network connectors: what a microVM's `ingressNetworkConnectors` let
//! through its endpoint and whether its `egressNetworkConnectors` give it
//! the internet. The API validates the ARNs
//! (`arn:aws:lambda:<region>:aws:network-connector:aws-network-connector:<NAME>`);
//! this reads the names. Pure; called on request tasks.

use serde::{Deserialize, Serialize};

/// The ARN prefix of every connector, before the region.
const ARN_SUFFIX_MARKER: &str = ":aws:network-connector:aws-network-connector:";

/// Ingress connector names.
pub const ALL_INGRESS: &str = "ALL_INGRESS";
pub const NO_INGRESS: &str = "NO_INGRESS";
pub const HTTP_INGRESS: &str = "HTTP_INGRESS";
pub const SHELL_INGRESS: &str = "SHELL_INGRESS";
/// The egress connector's name.
pub use crate::config::INTERNET_EGRESS;

/// What a microVM's endpoint lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressRules {
    /// HTTP requests and WebSockets to the app's ports.
    pub http: bool,
    /// The interactive shell.
    pub shell: bool,
}

impl IngressRules {
    /// No connectors given: HTTP only (`HTTP_INGRESS`). A shell must be
    /// asked for (`SHELL_INGRESS` or `ALL_INGRESS`).
    pub const DEFAULT: IngressRules = IngressRules {
        http: true,
        shell: false,
    };

    /// The rules of a connector list (ARNs). `None` or an empty list is
    /// [`IngressRules::DEFAULT`]; otherwise each connector adds what it
    /// allows (`NO_INGRESS` adds nothing).
    pub fn of(arns: Option<&[String]>) -> IngressRules {
        let Some(arns) = arns.filter(|a| !a.is_empty()) else {
            return Self::DEFAULT;
        };
        let mut r = IngressRules {
            http: false,
            shell: false,
        };
        for name in arns.iter().filter_map(|a| connector_name(a)) {
            match name {
                ALL_INGRESS => {
                    r.http = true;
                    r.shell = true;
                }
                HTTP_INGRESS => r.http = true,
                SHELL_INGRESS => r.shell = true,
                _ => {}
            }
        }
        r
    }
}

/// The connector name at the end of an ARN, if it is one.
pub fn connector_name(arn: &str) -> Option<&str> {
    let (_, name) = arn.split_once(ARN_SUFFIX_MARKER)?;
    (!name.is_empty()).then_some(name)
}

/// Whether an egress connector list asks for the internet.
pub fn wants_internet(arns: Option<&[String]>) -> bool {
    arns.into_iter()
        .flatten()
        .any(|a| connector_name(a) == Some(INTERNET_EGRESS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(name: &str) -> String {
        format!("arn:aws:lambda:us-east-1:aws:network-connector:aws-network-connector:{name}")
    }

    #[test]
    fn no_connectors_mean_http_only() {
        assert_eq!(IngressRules::of(None), IngressRules::DEFAULT);
        assert_eq!(IngressRules::of(Some(&[])), IngressRules::DEFAULT);
        assert_eq!(
            (IngressRules::DEFAULT.http, IngressRules::DEFAULT.shell),
            (true, false)
        );
    }

    #[test]
    fn each_connector_adds_what_it_allows() {
        let of = |names: &[&str]| {
            let v: Vec<String> = names.iter().map(|n| arn(n)).collect();
            let r = IngressRules::of(Some(&v));
            (r.http, r.shell)
        };
        assert_eq!(of(&[NO_INGRESS]), (false, false));
        assert_eq!(of(&[HTTP_INGRESS]), (true, false));
        assert_eq!(of(&[SHELL_INGRESS]), (false, true));
        assert_eq!(of(&[ALL_INGRESS]), (true, true));
        assert_eq!(of(&[HTTP_INGRESS, SHELL_INGRESS]), (true, true));
    }

    #[test]
    fn internet_egress_is_read_from_the_arn_name() {
        assert!(wants_internet(Some(&[arn(INTERNET_EGRESS)])));
        assert!(!wants_internet(None));
        assert!(!wants_internet(Some(&[arn("INTERNET_EGRESSX")])));
        assert_eq!(connector_name("INTERNET_EGRESS"), None);
    }
}
