//! `touchpoint migrate`: creates the database and applies the ordered migrations of
//! `touchpoint_schemas::clickhouse::MIGRATIONS` that are not recorded yet. Idempotent.

use anyhow::{Context, Result};
use clickhouse::Row;
use serde::Serialize;
use touchpoint_schemas::clickhouse::{MIGRATIONS, MIGRATIONS_TABLE_DDL};

use super::ClickHouseConfig;

#[derive(Row, Serialize)]
struct AppliedMigration<'a> {
    version: u32,
    name: &'a str,
}

/// Applies pending migrations; returns the names of those applied now.
pub async fn migrate(config: &ClickHouseConfig) -> Result<Vec<&'static str>> {
    let server = config.server_client();
    let mut create_db = String::from("CREATE DATABASE IF NOT EXISTS ");
    create_db.push_str(&quote_identifier(&config.database));
    server.query(&create_db).execute().await.with_context(|| format!("creating database {}", config.database))?;

    let client = config.client();
    client.query(MIGRATIONS_TABLE_DDL).execute().await.context("creating schema_migrations")?;
    let applied: Vec<u32> = client
        .query("SELECT version FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await
        .context("reading schema_migrations")?;

    let mut now_applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        tracing::info!(migration = m.name, database = %config.database, "applying migration");
        // '?' is the client's bind placeholder; DDL must not be scanned for it.
        client.query_raw(m.sql).execute().await.with_context(|| format!("applying migration {}", m.name))?;
        let mut insert = client.insert::<AppliedMigration<'_>>("schema_migrations").await?;
        insert.write(&AppliedMigration { version: m.version, name: m.name }).await?;
        insert.end().await.with_context(|| format!("recording migration {}", m.name))?;
        now_applied.push(m.name);
    }
    Ok(now_applied)
}

/// Drops every database whose name starts with `prefix`; returns how many. For benchmarks and tests that
/// store into scratch databases under a unique prefix (their parts would otherwise stay, and be merged in
/// the background, for as long as the server runs).
pub async fn drop_databases_with_prefix(config: &ClickHouseConfig, prefix: &str) -> Result<usize> {
    if prefix.is_empty() {
        anyhow::bail!("refusing to drop every database (empty prefix)");
    }
    let server = config.server_client();
    let names: Vec<String> = server
        .query("SELECT name FROM system.databases WHERE startsWith(name, ?)")
        .bind(prefix)
        .fetch_all()
        .await
        .context("listing databases")?;
    for name in &names {
        let drop = format!("DROP DATABASE IF EXISTS {} SYNC", quote_identifier(name));
        server.query(&drop).execute().await.with_context(|| format!("dropping database {name}"))?;
    }
    Ok(names.len())
}

fn quote_identifier(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}
