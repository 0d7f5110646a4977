//! The API catalogue: every `Api` with the consumers granted it and who answers for it,
//! and each API's OpenAPI document, read the same way by the REST API (`/v1/apis`) and
//! the web UI (`/ui/apis`).
//!
//! Resources come from the store; the backend service's owner and OpenAPI document from
//! memory (its `Service` definition). Nothing here is cached: an apply shows at once.

use ieum_model::ServiceSpec;
use ieum_model::api::{ApiConsumerSpec, ApiSpec, openapi};
use ieum_model::resource::Kind;
use ieum_store::StoredResource;

use super::Registry;
use crate::RegistryError;

/// One `Api` as the catalogue shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogueApi {
    /// The `Api`'s name.
    pub name: String,
    /// Its spec.
    pub spec: ApiSpec,
    /// The `ApiConsumer`s that list it, by name.
    pub consumers: Vec<CatalogueConsumer>,
    /// Who answers for it: the `Api`'s `owner`, else its backend service's (so an API
    /// without one still names someone to ask).
    pub owner: Option<String>,
}

/// A consumer granted an API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueConsumer {
    /// The `ApiConsumer`'s name.
    pub name: String,
    /// Who it is, from its spec.
    pub description: Option<String>,
}

impl Registry {
    /// Every `Api`, by name, each with its consumers. An `Api` whose stored spec this
    /// server cannot read (written by another version) is left out, with a warning.
    pub async fn apis(&self) -> Result<Vec<CatalogueApi>, RegistryError> {
        let consumers = self.consumers().await?;
        let mut out: Vec<CatalogueApi> = self
            .resources(Kind::Api)
            .await?
            .iter()
            .filter_map(|r| self.catalogue_entry(r, &consumers))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One `Api` with its consumers; `NotFound` when there is none of that name.
    pub async fn api(&self, name: &str) -> Result<CatalogueApi, RegistryError> {
        let resource = self.resource(Kind::Api, name).await?;
        let consumers = self.consumers().await?;
        self.catalogue_entry(&resource, &consumers).ok_or_else(|| {
            RegistryError::NotFound(format!(
                "Api/{name} is stored in a shape this server does not read: apply it again"
            ))
        })
    }

    /// The OpenAPI 3.1 document of `api` ([`openapi::document`]), from its backend
    /// service's own OpenAPI document when the service declares one inline.
    pub fn api_openapi(&self, api: &CatalogueApi) -> serde_json::Value {
        let backend = api
            .spec
            .backend
            .service
            .as_ref()
            .and_then(|s| self.service_spec(s.as_str()))
            .and_then(|s| s.openapi_document());
        openapi::document(&api.name, &api.spec, backend.as_ref())
    }

    /// A service's definition, from memory.
    fn service_spec(&self, name: &str) -> Option<ServiceSpec> {
        let st = self.core.lock();
        st.services.get(name).map(|s| s.spec.clone())
    }

    async fn consumers(&self) -> Result<Vec<(String, ApiConsumerSpec)>, RegistryError> {
        Ok(self
            .resources(Kind::ApiConsumer)
            .await?
            .into_iter()
            .filter_map(|r| {
                let spec = serde_json::from_value(r.spec)
                    .inspect_err(|e| {
                        tracing::warn!(consumer = %r.name, error = %e, "unreadable ApiConsumer left out of the catalogue");
                    })
                    .ok()?;
                Some((r.name, spec))
            })
            .collect())
    }

    fn catalogue_entry(
        &self,
        r: &StoredResource,
        consumers: &[(String, ApiConsumerSpec)],
    ) -> Option<CatalogueApi> {
        let spec: ApiSpec = serde_json::from_value(r.spec.clone())
            .inspect_err(|e| {
                tracing::warn!(api = %r.name, error = %e, "unreadable Api left out of the catalogue");
            })
            .ok()?;
        let owner = spec.owner.clone().or_else(|| {
            let service = spec.backend.service.as_ref()?;
            self.service_spec(service.as_str())?.owner
        });
        let mut granted: Vec<CatalogueConsumer> = consumers
            .iter()
            .filter(|(_, c)| c.apis.iter().any(|a| a.as_str() == r.name))
            .map(|(name, c)| CatalogueConsumer {
                name: name.clone(),
                description: c.description.clone(),
            })
            .collect();
        granted.sort_by(|a, b| a.name.cmp(&b.name));
        Some(CatalogueApi {
            name: r.name.clone(),
            spec,
            consumers: granted,
            owner,
        })
    }
}
