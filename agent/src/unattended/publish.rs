//! Where the status goes outside the host: this conversion host's own Nova server
//! metadata. Only osm's keys are touched: changed ones are merged, osm keys that are no
//! longer part of the status (a plan error fixed, …) are deleted.
use std::time::Duration;

use reqwest::Method;

use super::status;
use crate::cloud::openstack::discovery;
use crate::cloud::openstack::session::Body;
use crate::cloud::openstack::{Client, CloudConfig, Error, Metadata, OpenStackSettings, RetryPolicy, Service};

/// One publish must not hold the status back for the client's usual 5 minutes.
const CALL_DEADLINE: Duration = Duration::from_secs(60);

pub struct Target {
    client: Client,
    pub server_id: String,
    pub server_name: String,
}

/// Why there is no target.
pub enum Unavailable {
    /// No credentials at all: status stays in the journal (not retried).
    NotConfigured(String),
    /// Credentials, but this host is not found (tried again later).
    Discovery(String),
}

/// The OpenStack client from `[openstack]` and this host's own server.
pub async fn find(s: &OpenStackSettings) -> Result<Target, Unavailable> {
    let cfg = CloudConfig::from_environment(s.cloud.as_deref(), s.clouds_file.as_deref())
        .map_err(|e| Unavailable::NotConfigured(e.to_string()))?;
    let policy = RetryPolicy {
        deadline: s.call_deadline.min(CALL_DEADLINE),
        request_timeout: s.request_timeout.min(CALL_DEADLINE),
        ..s.retry_policy()
    };
    let client = Client::new(cfg, policy).map_err(|e| Unavailable::NotConfigured(e.to_string()))?;
    let host = discovery::discover(&client, &s.discovery())
        .await
        .map_err(|e| Unavailable::Discovery(e.to_string()))?;
    Ok(Target {
        client,
        server_id: host.identity.instance_id.clone(),
        server_name: host.identity.name.clone().unwrap_or_default(),
    })
}

impl Target {
    /// Make the server's osm keys equal `md`: merge what changed, then delete stale keys.
    pub async fn apply(&self, md: &Metadata) -> Result<(), Error> {
        let current = self.client.get_server(&self.server_id).await?.metadata;
        let changed: Metadata = md
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !changed.is_empty() {
            self.client.set_server_metadata(&self.server_id, &changed).await?;
        }
        for key in current.keys().filter(|k| status::is_ours(k) && !md.contains_key(*k)) {
            let path = format!("/servers/{}/metadata/{}", escape(&self.server_id), escape(key));
            match self
                .client
                .session()
                .call(Service::Compute, Method::DELETE, &path, Body::None)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Percent-encode one path segment.
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(super::escape("osm_vm_a-1"), "osm_vm_a-1");
        assert_eq!(super::escape("osm_vm_a b/ü"), "osm_vm_a%20b%2F%C3%BC");
    }
}
