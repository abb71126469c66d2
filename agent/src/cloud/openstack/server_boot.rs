//! Booting the migrated server: create it (or find this spec's from an earlier try) and
//! wait until it is ACTIVE.
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
        let server = self.create_server(spec).await?;
        record(on_server, &server)?;
        self.wait_server_active(&server.id, timeout).await
    }
}

fn record(on_server: OnServer<'_>, s: &Server) -> Result<(), Error> {
    on_server(&s.id).map_err(|message| Error::State {
        what: format!("recording server {} ({})", s.name, s.id),
        message,
    })
}
