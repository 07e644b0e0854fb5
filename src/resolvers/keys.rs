//! Provider API keys: which providers take one, how each is sent, and a map that never
//! shows them.

use std::collections::BTreeMap;
use std::fmt;

/// A provider that takes an API key, how the run finds it, and how it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyedProvider {
    /// The provider (and resolver) name, as `--api-key NAME=KEY` spells it.
    pub name: &'static str,
    /// The environment variable read when no flag gives the key.
    pub env: &'static str,
    /// How the key is sent, as the provider documents it.
    pub sent_as: &'static str,
}

/// The providers that take a key.
pub const KEYED_PROVIDERS: [KeyedProvider; 4] = [
    KeyedProvider {
        name: "openalex",
        env: "OPENALEX_API_KEY",
        sent_as: "the api_key= query parameter",
    },
    KeyedProvider {
        name: "core",
        env: "CORE_API_KEY",
        sent_as: "Authorization: Bearer KEY",
    },
    KeyedProvider {
        name: "semantic_scholar",
        env: "S2_API_KEY",
        sent_as: "the x-api-key header",
    },
    KeyedProvider {
        name: "crossref",
        env: "CROSSREF_PLUS_TOKEN",
        sent_as: "Crossref-Plus-API-Token: Bearer KEY",
    },
];

/// API keys by provider name. `Debug` shows the providers, never the keys.
///
/// ```
/// use contentdownload::resolvers::ApiKeys;
///
/// let mut keys = ApiKeys::default();
/// keys.insert("core", "s3cr3t").unwrap();
/// assert_eq!(keys.get("core"), Some("s3cr3t"));
/// assert!(!format!("{keys:?}").contains("s3cr3t"));
/// assert!(keys.insert("nope", "k").is_err());
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys(BTreeMap<&'static str, String>);

impl ApiKeys {
    /// The key of `provider`, if one was given.
    pub fn get(&self, provider: &str) -> Option<&str> {
        self.0.get(provider).map(String::as_str)
    }

    /// Sets the key of `provider` (replacing one given before). Fails, naming the provider
    /// but never the key, on an unknown provider or a key that cannot be sent in a header
    /// or query (empty, or with control characters or spaces).
    pub fn insert(&mut self, provider: &str, key: &str) -> Result<(), String> {
        let Some(p) = KEYED_PROVIDERS.iter().find(|p| p.name == provider) else {
            return Err(format!(
                "unknown API key provider {provider:?}: expected one of {}",
                KEYED_PROVIDERS.map(|p| p.name).join(", ")
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("the {provider} API key is empty"));
        }
        if !key.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "the {provider} API key holds a space, a control or a non-ASCII character (not shown)"
            ));
        }
        self.0.insert(p.name, key.to_owned());
        Ok(())
    }

    /// The providers that have a key.
    pub fn providers(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.keys().copied()
    }

    /// Whether no key was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, crate::layers::telemetry::REDACTED)))
            .finish()
    }
}
