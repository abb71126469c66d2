//! What a migration's checks ask of the destination before the first volume: volume
//! types, availability zones and the port quota.
use serde::Deserialize;

use super::client::Client;
use super::session::Service::{BlockStorage, Network};
use super::Error;

/// Free capacity of one quota (`None`: unlimited).
pub fn free(limit: i64, used: i64) -> Option<i64> {
    (limit >= 0).then(|| (limit - used).max(0))
}

impl Client {
    /// The names and ids of the Cinder volume types the project may use.
    pub async fn volume_types(&self) -> Result<Vec<(String, String)>, Error> {
        #[derive(Deserialize)]
        struct T {
            id: String,
            name: String,
        }
        #[derive(Deserialize)]
        struct R {
            volume_types: Vec<T>,
        }
        let r: R = self.get_json(BlockStorage, "/types").await?;
        Ok(r.volume_types.into_iter().map(|t| (t.name, t.id)).collect())
    }

    /// Cinder's availability zones that are up.
    pub async fn volume_zones(&self) -> Result<Vec<String>, Error> {
        #[derive(Deserialize)]
        struct State {
            available: bool,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Zone {
            zone_name: String,
            zone_state: State,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct R {
            availability_zone_info: Vec<Zone>,
        }
        let r: R = self.get_json(BlockStorage, "/os-availability-zone").await?;
        Ok(r.availability_zone_info
            .into_iter()
            .filter(|z| z.zone_state.available)
            .map(|z| z.zone_name)
            .collect())
    }

    /// Ports the project may still create (Neutron's quota details; `None`: unlimited).
    pub async fn ports_free(&self) -> Result<Option<i64>, Error> {
        #[derive(Deserialize)]
        struct Detail {
            limit: i64,
            used: i64,
            #[serde(default)]
            reserved: i64,
        }
        #[derive(Deserialize)]
        struct Q {
            port: Detail,
        }
        #[derive(Deserialize)]
        struct R {
            quota: Q,
        }
        let project = self.session.project_id().await?;
        let r: R = self
            .get_json(Network, &format!("/quotas/{project}/details.json"))
            .await?;
        let p = r.quota.port;
        Ok(free(p.limit, p.used + p.reserved))
    }
}
