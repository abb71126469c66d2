//! Nova (compute v2.1, microversion 2.79): volume attachments, flavors, servers, limits.
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use super::client::{q, Client};
use super::session::{Body, Service::Compute};
use super::types::*;
use super::Error;

#[derive(Deserialize)]
struct OneServer {
    server: Server,
}

impl Client {
    /// Attach a volume to a server (returns at once; the volume goes `attaching` →
    /// `in-use`). A retried call finds the attachment the first one made.
    pub async fn attach_volume(&self, server_id: &str, volume_id: &str) -> Result<Attachment, Error> {
        let body = json!({ "volumeAttachment": { "volumeId": volume_id, "delete_on_termination": false } });
        let path = format!("/servers/{server_id}/os-volume_attachments");
        let find = || async {
            Ok(self
                .server_attachments(server_id)
                .await?
                .into_iter()
                .find(|a| a.volume_id == volume_id))
        };
        let create = || async {
            #[derive(Deserialize)]
            struct R {
                #[serde(rename = "volumeAttachment")]
                a: Attachment,
            }
            let r: R = self.post_once(Compute, &path, body.clone()).await?.json(Compute)?;
            Ok(r.a)
        };
        self.find_or_create(&format!("attachment of {volume_id} to {server_id}"), find, create)
            .await
    }

    /// Ask Nova to detach; an attachment that is already gone is fine.
    pub async fn detach_volume(&self, server_id: &str, volume_id: &str) -> Result<(), Error> {
        let path = format!("/servers/{server_id}/os-volume_attachments/{volume_id}");
        match self.session.call(Compute, Method::DELETE, &path, Body::None).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn server_attachments(&self, server_id: &str) -> Result<Vec<Attachment>, Error> {
        let path = format!("/servers/{server_id}/os-volume_attachments");
        self.list_all_by_offset(Compute, &path, "volumeAttachments").await
    }

    /// All flavors the project sees, with their extra specs (2.61+ lists them).
    pub async fn list_flavors(&self) -> Result<Vec<Flavor>, Error> {
        self.list_all(Compute, "/flavors/detail?is_public=None", "flavors")
            .await
    }

    pub async fn get_flavor(&self, id: &str) -> Result<Flavor, Error> {
        #[derive(Deserialize)]
        struct R {
            flavor: Flavor,
        }
        match self.get_json::<R>(Compute, &format!("/flavors/{}", q(id))).await {
            Ok(r) => Ok(r.flavor),
            Err(e) if e.status() == Some(404) => Err(Error::NotFound(format!("there is no flavor {id}"))),
            Err(e) => Err(e),
        }
    }

    /// Create a flavor (admin) with its extra specs; an existing flavor of that name is
    /// returned (its extra specs merged with `spec`'s).
    pub async fn create_flavor(&self, spec: &FlavorSpec) -> Result<Flavor, Error> {
        #[derive(Deserialize)]
        struct R {
            flavor: Flavor,
        }
        let body = json!({ "flavor": {
            "name": spec.name,
            "vcpus": spec.vcpus,
            "ram": spec.ram_mib,
            "disk": spec.disk_gb,
            "os-flavor-access:is_public": spec.is_public,
        }});
        let find = || async { Ok(self.list_flavors().await?.into_iter().find(|f| f.name == spec.name)) };
        let create = || async {
            let r: R = self.post_once(Compute, "/flavors", body.clone()).await?.json(Compute)?;
            Ok(r.flavor)
        };
        let mut f = self
            .find_or_create(&format!("flavor {}", spec.name), find, create)
            .await?;
        if !spec.extra_specs.is_empty() {
            #[derive(Deserialize)]
            struct E {
                extra_specs: Metadata,
            }
            let e: E = self
                .send(
                    Compute,
                    Method::POST,
                    &format!("/flavors/{}/os-extra_specs", q(&f.id)),
                    json!({ "extra_specs": spec.extra_specs }),
                )
                .await?
                .json(Compute)?;
            f.extra_specs.extend(e.extra_specs);
        }
        Ok(f)
    }

    pub async fn delete_flavor(&self, id: &str) -> Result<(), Error> {
        match self
            .session
            .call(Compute, Method::DELETE, &format!("/flavors/{}", q(id)), Body::None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Create a server that boots from existing volumes (never deleted with the server)
    /// on pre-created ports. With an idempotency key, a server an earlier try created is
    /// returned.
    pub async fn create_server(&self, spec: &ServerSpec) -> Result<Server, Error> {
        if !spec.volumes.iter().any(|v| v.boot_index == Some(0)) {
            return Err(Error::Invalid(format!(
                "server {}: no volume has boot_index 0; mark the boot disk",
                spec.name
            )));
        }
        let mut metadata = spec.metadata.clone();
        if let Some(k) = &spec.idempotency_key {
            metadata.insert(IDEMPOTENCY_KEY.into(), k.clone());
        }
        let bdm: Vec<Value> = spec
            .volumes
            .iter()
            .map(|v| {
                let mut m = json!({
                    "uuid": v.volume_id,
                    "source_type": "volume",
                    "destination_type": "volume",
                    "delete_on_termination": false,
                });
                m["boot_index"] = match v.boot_index {
                    Some(i) => json!(i),
                    None => json!(-1),
                };
                m
            })
            .collect();
        let networks: Value = if spec.port_ids.is_empty() {
            json!("none")
        } else {
            json!(spec.port_ids.iter().map(|p| json!({ "port": p })).collect::<Vec<_>>())
        };
        let mut s = json!({
            "name": spec.name,
            "flavorRef": spec.flavor_id,
            "block_device_mapping_v2": bdm,
            "networks": networks,
            "metadata": metadata,
        });
        if !spec.security_groups.is_empty() {
            s["security_groups"] = json!(spec
                .security_groups
                .iter()
                .map(|g| json!({ "name": g }))
                .collect::<Vec<_>>());
        }
        if let Some(az) = &spec.availability_zone {
            s["availability_zone"] = json!(az);
        }
        if let Some(k) = &spec.key_name {
            s["key_name"] = json!(k);
        }
        if let Some(ud) = &spec.user_data {
            s["user_data"] = json!(base64(ud));
        }
        let body = json!({ "server": s });
        let create = || async {
            #[derive(Deserialize)]
            struct R {
                server: Value,
            }
            let r: R = self.post_once(Compute, "/servers", body.clone()).await?.json(Compute)?;
            let id = r
                .server
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            self.get_server(&id).await
        };
        let find = || async {
            let Some(k) = &spec.idempotency_key else {
                return Ok(None);
            };
            let path = format!("/servers/detail?name={}", q(&format!("^{}$", regex_escape(&spec.name))));
            let servers: Vec<Server> = self.list_all(Compute, &path, "servers").await?;
            Ok(servers
                .into_iter()
                .find(|s| s.metadata.get(IDEMPOTENCY_KEY) == Some(k) && s.status != "DELETED"))
        };
        self.find_or_create(&format!("server {}", spec.name), find, create)
            .await
    }

    pub async fn get_server(&self, id: &str) -> Result<Server, Error> {
        match self
            .get_json::<OneServer>(Compute, &format!("/servers/{}", q(id)))
            .await
        {
            Ok(r) => Ok(r.server),
            Err(e) if e.status() == Some(404) => Err(Error::NotFound(format!("there is no server {id}"))),
            Err(e) => Err(e),
        }
    }

    /// Wait for ACTIVE; ERROR fails at once with Nova's fault message.
    pub async fn wait_server_active(&self, id: &str, timeout: Duration) -> Result<Server, Error> {
        let s = self.wait_server_settled(id, timeout).await?;
        if s.status == "ERROR" {
            return Err(Error::State {
                what: format!("server {} ({id})", s.name),
                message: format!("status ERROR: {}", super::server_boot::fault(&s)),
            });
        }
        Ok(s)
    }

    /// Wait until the server is ACTIVE or ERROR, and return it either way.
    pub async fn wait_server_settled(&self, id: &str, timeout: Duration) -> Result<Server, Error> {
        self.wait_until(&format!("server {id} waiting for ACTIVE"), timeout, || async {
            let s = self.get_server(id).await?;
            match s.status.as_str() {
                "ACTIVE" | "ERROR" => Ok(Ok(s)),
                other => Ok(Err(other.to_string())),
            }
        })
        .await
    }

    pub async fn delete_server(&self, id: &str, timeout: Duration) -> Result<(), Error> {
        match self
            .session
            .call(Compute, Method::DELETE, &format!("/servers/{}", q(id)), Body::None)
            .await
        {
            Ok(_) => {}
            Err(e) if e.status() == Some(404) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.wait_until(&format!("deleting server {id}"), timeout, || async {
            match self.get_server(id).await {
                Err(e) if e.is_not_found() => Ok(Ok(())),
                Err(e) => Err(e),
                Ok(s) if s.status == "DELETED" => Ok(Ok(())),
                Ok(s) => Ok(Err(s.status)),
            }
        })
        .await
    }

    /// Merge keys into the server's metadata (the conversion host reports status there).
    pub async fn set_server_metadata(&self, id: &str, md: &Metadata) -> Result<Metadata, Error> {
        #[derive(Deserialize)]
        struct R {
            metadata: Metadata,
        }
        let r: R = self
            .send(
                Compute,
                Method::POST,
                &format!("/servers/{}/metadata", q(id)),
                json!({ "metadata": md }),
            )
            .await?
            .json(Compute)?;
        Ok(r.metadata)
    }

    pub async fn compute_limits(&self) -> Result<ComputeLimits, Error> {
        #[derive(Deserialize)]
        struct R {
            limits: L,
        }
        #[derive(Deserialize)]
        struct L {
            absolute: ComputeLimits,
        }
        let r: R = self.get_json(Compute, "/limits").await?;
        Ok(r.limits.absolute)
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Standard base64 with padding (user data).
pub(super) fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 { A[n as usize & 63] as char } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_padding() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"#cloud-config\n"), "I2Nsb3VkLWNvbmZpZwo=");
    }
}
