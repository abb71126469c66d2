//! Glance (image v2): create an image and upload its data (the mode without a
//! conversion host). The upload is one PUT: it is not retried blindly (a half-sent body
//! cannot be replayed from a stream); the caller re-runs the step, which finds the image
//! by name and uploads again while it is still `queued`.
use std::path::Path;

use reqwest::Method;
use serde_json::json;

use super::client::{q, Client};
use super::session::{Body, Service::Image as Img};
use super::types::*;
use super::Error;

impl Client {
    pub async fn create_image(&self, spec: &ImageSpec) -> Result<Image, Error> {
        let mut body = json!({
            "name": spec.name,
            "disk_format": spec.disk_format,
            "container_format": spec.container_format,
        });
        if let Some(v) = &spec.visibility {
            body["visibility"] = json!(v);
        }
        for (k, v) in &spec.properties {
            body[k] = json!(v);
        }
        let find = || async {
            let images: Vec<Image> = self
                .list_all(Img, &format!("/images?name={}", q(&spec.name)), "images")
                .await?;
            Ok(images.into_iter().find(|i| i.status == "queued"))
        };
        let create = || async { self.post_once(Img, "/images", body.clone()).await?.json(Img) };
        self.find_or_create(&format!("image {}", spec.name), find, create).await
    }

    /// Upload the file's bytes as the image data.
    pub async fn upload_image(&self, id: &str, file: &Path) -> Result<Image, Error> {
        let data = tokio::fs::read(file)
            .await
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", file.display())))?;
        self.session
            .call_once(
                Img,
                Method::PUT,
                &format!("/images/{}/file", q(id)),
                Body::Bytes(data, "application/octet-stream"),
            )
            .await?;
        self.get_image(id).await
    }

    pub async fn get_image(&self, id: &str) -> Result<Image, Error> {
        self.get_json(Img, &format!("/images/{}", q(id))).await
    }

    pub async fn delete_image(&self, id: &str) -> Result<(), Error> {
        match self
            .session
            .call(Img, Method::DELETE, &format!("/images/{}", q(id)), Body::None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
