//! The schema: its name, its versioned migrations, and how they are run
//! when several instances start at once.

use deadpool_postgres::Object;

use super::Refused;
use crate::store::StoreError;

/// The migrations, in order: version `n` is `MIGRATIONS[n - 1]`. `{s}` is
/// the schema. Add new ones at the end; never edit one that shipped.
const MIGRATIONS: &[&str] = &[
    // 1: every table of the store.
    "
    -- Milliseconds since the Unix epoch on the server's clock, by which
    -- every expiry is measured: instances whose clocks differ agree. STABLE
    -- (the statement's time), so indexes serve comparisons with it.
    CREATE FUNCTION {s}.now_ms() RETURNS bigint LANGUAGE sql STABLE
        AS $$ SELECT (extract(epoch FROM now()) * 1000)::bigint $$;

    -- The validation tokens of a delivery, kept once for all its items and
    -- dead letters (which name it in delivery_id), with how many do: the
    -- last one completed removes it.
    CREATE SEQUENCE {s}.delivery_ids;
    CREATE TABLE {s}.deliveries (
        id bigint PRIMARY KEY,
        tokens bytea NOT NULL,
        refs integer NOT NULL
    );
    -- What the sweep looks for: deliveries a failed complete left unnamed.
    CREATE INDEX deliveries_unnamed ON {s}.deliveries (id) WHERE refs <= 0;

    -- The inbox. available_at_ms is when the item may be claimed: its
    -- arrival, a retry's due time, or when its claim lapses (the claimer
    -- died or hangs) and another worker may take it over.
    CREATE TABLE {s}.items (
        id bigserial PRIMARY KEY,
        payload bytea NOT NULL,
        received_at_ms bigint NOT NULL,
        delivery_id bigint,
        attempts integer NOT NULL DEFAULT 0,
        available_at_ms bigint NOT NULL,
        claimed_by text
    );
    CREATE INDEX items_available ON {s}.items (available_at_ms, id);

    CREATE TABLE {s}.dead_letters (
        id bigserial PRIMARY KEY,
        payload bytea NOT NULL,
        received_at_ms bigint NOT NULL,
        delivery_id bigint,
        attempts integer NOT NULL,
        reason text NOT NULL,
        dead_at_ms bigint NOT NULL
    );

    -- Dedupe keys: handled (owner NULL) until expires_at_ms, or being
    -- handled by owner until its lease ends at expires_at_ms.
    CREATE TABLE {s}.dedupe (
        key bytea PRIMARY KEY,
        owner text,
        expires_at_ms bigint NOT NULL
    );
    CREATE INDEX dedupe_expiry ON {s}.dedupe (expires_at_ms);

    CREATE TABLE {s}.subscriptions (
        id text PRIMARY KEY,
        record text NOT NULL
    );

    -- Named leases, and presence (a lease per member, see store::lease).
    CREATE TABLE {s}.leases (
        name text PRIMARY KEY,
        holder text NOT NULL,
        expires_at_ms bigint NOT NULL
    );

    -- Delta cursors: a round's progress (resource to last_success_ms) and
    -- its due mark (due_reason, due_at_ms), written by different statements.
    CREATE TABLE {s}.cursors (
        key text PRIMARY KEY,
        resource text NOT NULL,
        query text NOT NULL,
        delta_link text,
        next_link text,
        last_success_ms bigint,
        due_reason text,
        due_at_ms bigint
    );
    ",
];

/// The version this build migrates to.
pub(super) const LATEST: i32 = MIGRATIONS.len() as i32;

/// A validated schema name, and the SQL that names it.
#[derive(Clone, Debug)]
pub(super) struct Schema {
    name: String,
    /// The name quoted as an identifier.
    ident: String,
}

impl Schema {
    /// The schema `name`: letters, digits and `_`, not starting with a
    /// digit, at most 63 bytes (PostgreSQL's limit for a name).
    pub(super) fn new(name: &str) -> Result<Self, StoreError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(StoreError::unavailable(format!(
                "postgres: {name:?} is not a schema name this store uses (letters, digits and _, \
                 not starting with a digit, at most 63 bytes)"
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            ident: format!("\"{name}\""),
        })
    }

    /// The channel appends are announced on: the schema's name (channels
    /// are the database's, as schemas are).
    pub(super) fn channel(&self) -> &str {
        &self.name
    }

    /// `template` with `{s}` replaced by the quoted schema name.
    pub(super) fn sql(&self, template: &str) -> String {
        template.replace("{s}", &self.ident)
    }

    /// The advisory lock the migrations of this schema are run under: the
    /// same in every instance (FNV-1a of the name), apart per schema.
    fn lock_key(&self) -> i64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in b"msgraph-webhooks migrations "
            .iter()
            .chain(self.name.as_bytes())
        {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        i64::from_ne_bytes(hash.to_ne_bytes())
    }
}

/// Creates the schema or brings it to [`LATEST`]. Instances starting at
/// once queue on a transaction-scoped advisory lock, so each migration runs
/// once; a schema already at the latest version is only read, so a role
/// without the right to create tables can use a schema migrated for it.
pub(super) async fn migrate(client: &Object, schema: &Schema) -> Result<(), Refused> {
    if version(client, schema).await? == Some(LATEST) {
        return Ok(());
    }
    client.batch_execute("BEGIN").await.map_err(classify)?;
    let migrated = migrate_locked(client, schema).await;
    let end = if migrated.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let ended = client.batch_execute(end).await.map_err(classify);
    migrated.and(ended)
}

/// The schema's version, `None` when it has none yet.
async fn version(client: &Object, schema: &Schema) -> Result<Option<i32>, Refused> {
    let table = format!("{}.schema_migrations", schema.ident);
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(classify)?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let sql = schema.sql("SELECT max(version) FROM {s}.schema_migrations");
    let row = client.query_one(&sql, &[]).await.map_err(classify)?;
    Ok(row.get(0))
}

async fn migrate_locked(client: &Object, schema: &Schema) -> Result<(), Refused> {
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&schema.lock_key()])
        .await
        .map_err(classify)?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&schema.name],
        )
        .await
        .map_err(classify)?
        .is_some();
    if !exists {
        client
            .batch_execute(&schema.sql("CREATE SCHEMA {s}"))
            .await
            .map_err(classify)?;
    }
    client
        .batch_execute(&schema.sql(
            "CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        ))
        .await
        .map_err(classify)?;
    let current = version(client, schema).await?.unwrap_or(0);
    if current > LATEST {
        return Err(Refused::Server(StoreError::unavailable(format!(
            "postgres: schema {} is at version {current}, made by a newer msgraph-webhooks \
             (this one knows {LATEST})",
            schema.name
        ))));
    }
    let record = schema.sql("INSERT INTO {s}.schema_migrations (version) VALUES ($1)");
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i32 + 1;
        client
            .batch_execute(&schema.sql(migration))
            .await
            .map_err(classify)?;
        client
            .execute(&record, &[&version])
            .await
            .map_err(classify)?;
        tracing::info!(schema = %schema.name, version, "migrated the PostgreSQL schema");
    }
    Ok(())
}

/// [`Refused::of`] for a step of the migration.
fn classify(e: tokio_postgres::Error) -> Refused {
    Refused::of(e, "migrating the schema")
}
