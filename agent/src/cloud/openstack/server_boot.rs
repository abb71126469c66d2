//! Booting the migrated server: create it (or find this spec's from an earlier try) and
//! wait until it is ACTIVE. A server in ERROR — this try's, or one an earlier try left —
//! is deleted and created once more; ERROR again fails with Nova's fault message. (Found
//! again as it was, an ERROR server used to fail every retry of the step.)
use std::time::Duration;

use super::types::{Server, ServerSpec};
use super::{Client, Error};

/// Hears the id of each server made (or found) before the wait; the job records it so
/// that a cleanup after a crash finds the server.
pub type OnServer<'a> = &'a (dyn Fn(&str) -> Result<(), String> + Send + Sync);

impl Client {
    pub async fn boot_server(
        &self,
        spec: &ServerSpec,
        timeout: Duration,
        on_server: OnServer<'_>,
    ) -> Result<Server, Error> {
        let mut deleted: Option<Server> = None;
        loop {
            let server = self.create_server(spec).await?;
            record(on_server, &server)?;
            let server = self.wait_server_settled(&server.id, timeout).await?;
            if server.status == "ACTIVE" {
                return Ok(server);
            }
            if let Some(first) = &deleted {
                return Err(Error::State {
                    what: format!("server {} ({})", server.name, server.id),
                    message: format!(
                        "status ERROR again after server {} in ERROR was deleted and created once more: {}. \
                         Fix the cause (flavor, quota, volumes, network); the server is kept for `openstack server show {}`, \
                         and a retry deletes it and creates it again",
                        first.id,
                        fault(&server),
                        server.id
                    ),
                });
            }
            tracing::warn!(
                "server {} ({}) is in ERROR: {}; deleting it and creating it once more",
                server.name,
                server.id,
                fault(&server)
            );
            self.delete_server(&server.id, timeout).await?;
            // Nova releases the volumes as it deletes; the new server needs them available.
            for v in &spec.volumes {
                self.wait_volume(&v.volume_id, &["available"], timeout).await?;
            }
            deleted = Some(server);
        }
    }
}

/// Nova's fault message of a server in ERROR.
pub(super) fn fault(s: &Server) -> &str {
    s.fault
        .as_ref()
        .map(|f| f.message.as_str())
        .filter(|m| !m.is_empty())
        .unwrap_or("Nova gave no fault message")
}

fn record(on_server: OnServer<'_>, s: &Server) -> Result<(), Error> {
    on_server(&s.id).map_err(|message| Error::State {
        what: format!("recording server {} ({})", s.name, s.id),
        message,
    })
}
