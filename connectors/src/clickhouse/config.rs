//! ClickHouse connection settings.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding Touchpoint's tables (created by `touchpoint migrate`).
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
}

fn default_database() -> String {
    "touchpoint".into()
}
fn default_user() -> String {
    "default".into()
}

impl ClickHouseConfig {
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> Self {
        ClickHouseConfig { url: url.into(), database: database.into(), user: default_user(), password: None }
    }

    /// A client bound to the configured database.
    pub fn client(&self) -> clickhouse::Client {
        self.server_client().with_database(&self.database)
    }

    /// A client without a database (for `CREATE DATABASE`).
    pub fn server_client(&self) -> clickhouse::Client {
        let c = clickhouse::Client::default().with_url(&self.url).with_user(&self.user);
        match &self.password {
            Some(p) => c.with_password(p),
            None => c,
        }
    }
}
