//! Cinder (block-storage v3): volumes, their metadata, quota.
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use super::client::{q, Client};
use super::session::Service::BlockStorage;
use super::types::*;
use super::Error;

#[derive(Deserialize)]
struct One {
    volume: Volume,
}

impl Client {
    pub async fn volume_limits(&self) -> Result<VolumeLimits, Error> {
        #[derive(Deserialize)]
        struct R {
            limits: L,
        }
        #[derive(Deserialize)]
        struct L {
            absolute: Value,
        }
        let r: R = self.get_json(BlockStorage, "/limits").await?;
        let n = |k: &str| r.limits.absolute.get(k).and_then(Value::as_i64).unwrap_or(-1);
        Ok(VolumeLimits {
            max_gigabytes: n("maxTotalVolumeGigabytes"),
            used_gigabytes: n("totalGigabytesUsed").max(0),
            max_volumes: n("maxTotalVolumes"),
            used_volumes: n("totalVolumesUsed").max(0),
        })
    }

    /// Refuse up front when the project cannot hold `sizes_bytes` more volumes.
    pub async fn check_volume_quota(&self, sizes_bytes: &[u64]) -> Result<(), Error> {
        let l = self.volume_limits().await?;
        let want_gb: i64 = sizes_bytes.iter().map(|b| gib_for_bytes(*b) as i64).sum();
        let want_n = sizes_bytes.len() as i64;
        if l.max_gigabytes >= 0 && l.used_gigabytes + want_gb > l.max_gigabytes {
            return Err(Error::State {
                what: "Cinder quota".into(),
                message: format!(
                    "{want_gb} GiB more would exceed the project's volume quota ({} of {} GiB used); raise the gigabytes quota or free space",
                    l.used_gigabytes, l.max_gigabytes
                ),
            });
        }
        if l.max_volumes >= 0 && l.used_volumes + want_n > l.max_volumes {
            return Err(Error::State {
                what: "Cinder quota".into(),
                message: format!(
                    "{want_n} more volumes would exceed the project's quota ({} of {} used); raise the volumes quota",
                    l.used_volumes, l.max_volumes
                ),
            });
        }
        Ok(())
    }

    /// Create a volume (size rounded up to GiB); with an idempotency key, a volume that
    /// an earlier try created is returned instead of a second one.
    pub async fn create_volume(&self, spec: &VolumeSpec) -> Result<Volume, Error> {
        let mut metadata = spec.metadata.clone();
        if let Some(k) = &spec.idempotency_key {
            metadata.insert(IDEMPOTENCY_KEY.into(), k.clone());
        }
        let mut v = json!({
            "name": spec.name,
            "size": gib_for_bytes(spec.size_bytes),
            "metadata": metadata,
        });
        if let Some(t) = &spec.volume_type {
            v["volume_type"] = json!(t);
        }
        if let Some(az) = &spec.availability_zone {
            v["availability_zone"] = json!(az);
        }
        if let Some(d) = &spec.description {
            v["description"] = json!(d);
        }
        let body = json!({ "volume": v });
        let create = || async {
            let r: One = self
                .post_once(BlockStorage, "/volumes", body.clone())
                .await?
                .json(BlockStorage)?;
            Ok(r.volume)
        };
        match &spec.idempotency_key {
            Some(k) => {
                let find = || self.volume_by_key(k);
                self.find_or_create(&format!("volume {}", spec.name), find, create)
                    .await
            }
            None => {
                self.find_or_create(&format!("volume {}", spec.name), || async { Ok(None) }, create)
                    .await
            }
        }
    }

    /// The usable volume created with this idempotency key, if any (one in error or being
    /// deleted does not count).
    pub async fn volume_by_key(&self, key: &str) -> Result<Option<Volume>, Error> {
        let filter: Metadata = [(IDEMPOTENCY_KEY.to_string(), key.to_string())].into();
        Ok(self
            .find_volumes(&filter)
            .await?
            .into_iter()
            .find(|v| !v.status.starts_with("error") && v.status != "deleting"))
    }

    pub async fn get_volume(&self, id: &str) -> Result<Volume, Error> {
        match self.get_json::<One>(BlockStorage, &format!("/volumes/{id}")).await {
            Ok(r) => Ok(r.volume),
            Err(e) if e.status() == Some(404) => Err(Error::NotFound(format!("there is no volume {id}"))),
            Err(e) => Err(e),
        }
    }

    /// Wait until the volume's status is one of `want`; an `error*` status fails at once
    /// with Cinder's user message for the volume when it has one.
    pub async fn wait_volume(&self, id: &str, want: &[&str], timeout: Duration) -> Result<Volume, Error> {
        let what = format!("volume {id} waiting for {}", want.join("|"));
        self.wait_until(&what, timeout, || async {
            let v = self.get_volume(id).await?;
            if want.contains(&v.status.as_str()) {
                return Ok(Ok(v));
            }
            if v.status.starts_with("error") {
                let reason = self.volume_error_reason(id).await;
                return Err(Error::State {
                    what: format!("volume {id}"),
                    message: format!("status {}{reason}", v.status),
                });
            }
            Ok(Err(v.status))
        })
        .await
    }

    /// ": <reason>" from Cinder's user messages (3.3+), or "".
    async fn volume_error_reason(&self, id: &str) -> String {
        #[derive(Deserialize)]
        struct M {
            user_message: String,
        }
        let path = format!("/messages?resource_uuid={}", q(id));
        match self.list_all::<M>(BlockStorage, &path, "messages").await {
            Ok(m) if !m.is_empty() => format!(": {}", m.last().map(|m| m.user_message.as_str()).unwrap_or("")),
            _ => String::new(),
        }
    }

    pub async fn set_bootable(&self, id: &str, bootable: bool) -> Result<(), Error> {
        self.send(
            BlockStorage,
            Method::POST,
            &format!("/volumes/{id}/action"),
            json!({ "os-set_bootable": { "bootable": bootable } }),
        )
        .await?;
        Ok(())
    }

    /// Set the image properties Nova reads when booting from this volume (merged with
    /// those already there).
    pub async fn set_volume_image_metadata(&self, id: &str, props: &ImageProperties) -> Result<(), Error> {
        let md = props.to_metadata();
        if md.is_empty() {
            return Ok(());
        }
        self.send(
            BlockStorage,
            Method::POST,
            &format!("/volumes/{id}/action"),
            json!({ "os-set_image_metadata": { "metadata": md } }),
        )
        .await?;
        Ok(())
    }

    /// Merge `md` into the volume's metadata (POST merges; PUT would replace every key,
    /// the bug this avoids). Returns the whole metadata after the merge.
    pub async fn merge_volume_metadata(&self, id: &str, md: &Metadata) -> Result<Metadata, Error> {
        #[derive(Deserialize)]
        struct R {
            metadata: Metadata,
        }
        let r: R = self
            .send(
                BlockStorage,
                Method::POST,
                &format!("/volumes/{id}/metadata"),
                json!({ "metadata": md }),
            )
            .await?
            .json(BlockStorage)?;
        Ok(r.metadata)
    }

    /// Volumes of the project whose metadata holds every pair of `filter` (Cinder filters;
    /// checked again here since older Cinders ignore unknown filters).
    pub async fn find_volumes(&self, filter: &Metadata) -> Result<Vec<Volume>, Error> {
        let f = serde_json::to_string(filter).unwrap_or_default();
        let path = format!("/volumes/detail?metadata={}", q(&f));
        let volumes: Vec<Volume> = match self.list_all(BlockStorage, &path, "volumes").await {
            // A Cinder without `metadata` in its resource_filters.json refuses the filter.
            Err(e) if e.status() == Some(400) => self.list_all(BlockStorage, "/volumes/detail", "volumes").await?,
            r => r?,
        };
        Ok(volumes
            .into_iter()
            .filter(|v| filter.iter().all(|(k, val)| v.metadata.get(k) == Some(val)))
            .collect())
    }

    /// Delete a volume; one that is already gone is fine.
    pub async fn delete_volume(&self, id: &str) -> Result<(), Error> {
        match self
            .session
            .call(
                BlockStorage,
                Method::DELETE,
                &format!("/volumes/{id}"),
                super::session::Body::None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Delete and wait until Cinder no longer lists it.
    pub async fn delete_volume_wait(&self, id: &str, timeout: Duration) -> Result<(), Error> {
        self.delete_volume(id).await?;
        self.wait_until(&format!("deleting volume {id}"), timeout, || async {
            match self.get_volume(id).await {
                Err(e) if e.is_not_found() => Ok(Ok(())),
                Err(e) => Err(e),
                Ok(v) if v.status == "error_deleting" => Err(Error::State {
                    what: format!("volume {id}"),
                    message: "status error_deleting".into(),
                }),
                Ok(v) => Ok(Err(v.status)),
            }
        })
        .await
    }
}
