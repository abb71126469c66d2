//! Neutron (network v2.0): networks, subnets, security groups, ports.
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::client::{q, Client};
use super::session::{Body, Service::Network as Net};
use super::types::*;
use super::Error;

impl Client {
    /// A network by id, else by name (a name shared by several networks is an error that
    /// lists them).
    pub async fn find_network(&self, name_or_id: &str) -> Result<Network, Error> {
        #[derive(Deserialize)]
        struct One {
            network: Network,
        }
        match self.get_json::<One>(Net, &format!("/networks/{}", q(name_or_id))).await {
            Ok(r) => return Ok(r.network),
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e),
        }
        let found = self
            .list_all(Net, &format!("/networks?name={}", q(name_or_id)), "networks")
            .await?;
        unique("network", name_or_id, found, |n: &Network| n.id.clone())
    }

    /// A subnet by id, else by name (within `network_id` when given).
    pub async fn find_subnet(&self, name_or_id: &str, network_id: Option<&str>) -> Result<Subnet, Error> {
        #[derive(Deserialize)]
        struct One {
            subnet: Subnet,
        }
        match self.get_json::<One>(Net, &format!("/subnets/{}", q(name_or_id))).await {
            Ok(r) => return Ok(r.subnet),
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e),
        }
        let mut path = format!("/subnets?name={}", q(name_or_id));
        if let Some(n) = network_id {
            path.push_str(&format!("&network_id={}", q(n)));
        }
        let found = self.list_all(Net, &path, "subnets").await?;
        unique("subnet", name_or_id, found, |s: &Subnet| s.id.clone())
    }

    /// A security group id by id, else by name in the token's project (an admin sees
    /// every project's `default`).
    pub async fn find_security_group(&self, name_or_id: &str) -> Result<String, Error> {
        #[derive(Deserialize)]
        struct G {
            id: String,
        }
        #[derive(Deserialize)]
        struct One {
            security_group: G,
        }
        match self
            .get_json::<One>(Net, &format!("/security-groups/{}", q(name_or_id)))
            .await
        {
            Ok(r) => return Ok(r.security_group.id),
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e),
        }
        let project = self.session.project_id().await?;
        let path = format!("/security-groups?name={}&project_id={}", q(name_or_id), q(&project));
        let found = self.list_all(Net, &path, "security_groups").await?;
        unique("security group", name_or_id, found, |g: &G| g.id.clone()).map(|g| g.id)
    }

    pub async fn list_ports(&self, query: &str) -> Result<Vec<Port>, Error> {
        self.list_all(Net, &format!("/ports?{query}"), "ports").await
    }

    /// Find or create a port: the port with this MAC on this network (or, without a MAC,
    /// with this name and tags) is reused, so a retried step never makes a second port
    /// and never fails with "MAC address in use". Tags are added when missing.
    pub async fn ensure_port(&self, spec: &PortSpec) -> Result<Port, Error> {
        let find = || async {
            let query = match &spec.mac_address {
                Some(mac) => format!(
                    "network_id={}&mac_address={}",
                    q(&spec.network_id),
                    q(&mac.to_ascii_lowercase())
                ),
                None => {
                    let mut s = format!("network_id={}&name={}", q(&spec.network_id), q(&spec.name));
                    if !spec.tags.is_empty() {
                        s.push_str(&format!("&tags={}", q(&spec.tags.join(","))));
                    }
                    s
                }
            };
            Ok(self.list_ports(&query).await?.into_iter().next())
        };
        let mut port = json!({
            "network_id": spec.network_id,
            "name": spec.name,
        });
        if let Some(mac) = &spec.mac_address {
            port["mac_address"] = json!(mac.to_ascii_lowercase());
        }
        if !spec.fixed_ips.is_empty() {
            port["fixed_ips"] = json!(spec.fixed_ips);
        }
        if !spec.security_group_ids.is_empty() {
            port["security_groups"] = json!(spec.security_group_ids);
        }
        if let Some(d) = &spec.description {
            port["description"] = json!(d);
        }
        let body = json!({ "port": port });
        let create = || async {
            #[derive(Deserialize)]
            struct One {
                port: Port,
            }
            let r: One = self.post_once(Net, "/ports", body.clone()).await?.json(Net)?;
            Ok(r.port)
        };
        let mut p = self
            .find_or_create(
                &format!("port {} on network {}", spec.name, spec.network_id),
                find,
                create,
            )
            .await?;
        let missing: Vec<&String> = spec.tags.iter().filter(|t| !p.tags.contains(t)).collect();
        if !missing.is_empty() {
            let mut all = p.tags.clone();
            all.extend(missing.into_iter().cloned());
            #[derive(Deserialize)]
            struct T {
                tags: Vec<String>,
            }
            let t: T = self
                .send(
                    Net,
                    Method::PUT,
                    &format!("/ports/{}/tags", q(&p.id)),
                    json!({ "tags": all }),
                )
                .await?
                .json(Net)?;
            p.tags = t.tags;
        }
        Ok(p)
    }

    pub async fn delete_port(&self, id: &str) -> Result<(), Error> {
        match self
            .session
            .call(Net, Method::DELETE, &format!("/ports/{}", q(id)), Body::None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn unique<T>(kind: &str, name: &str, mut found: Vec<T>, id: impl Fn(&T) -> String) -> Result<T, Error> {
    match found.len() {
        0 => Err(Error::NotFound(format!("there is no {kind} named or with id {name:?}"))),
        1 => Ok(found.remove(0)),
        _ => Err(Error::Invalid(format!(
            "several {kind}s are named {name:?} ({}); give the id instead",
            found.iter().map(&id).collect::<Vec<_>>().join(", ")
        ))),
    }
}
