-- What the MongoDB stand-in (FerretDB 1.24 on PostgreSQL) needs so that a MongoDB index serves
-- the queries it is made for. Applied by devstack/ferretdb_store.sh at every start, so it is
-- idempotent. A real MongoDB needs none of this: there the functions' own indexes (created through
-- the MongoDB API, purchase_common/storage.py) serve the history query.
--
-- Why: FerretDB turns a MongoDB index on field f into a PostgreSQL btree on (_jsonb -> 'f'), but
-- pushes an equality filter {f: v} down as containment, (_jsonb -> 'f') @> v, which a btree
-- cannot serve (internal/backends/postgresql/query.go, filterEqual): every find by userId would
-- read the whole table. A GIN index (jsonb_path_ops) on the same expression serves @>. So each
-- btree FerretDB creates for a non-unique MongoDB index (one made to serve queries: history's
-- (userId, timestamp, eventId)) gets such a companion on the index's first field, made by an
-- event trigger in the same transaction as the btree. Unique indexes (eventId) get none: their
-- btree already enforces what they are for, and every insert would pay for a second index. The
-- companion is PostgreSQL's own: FerretDB's listIndexes does not show it, and dropping the
-- collection drops it.
-- FerretDB's prepared statements bind the field name as a parameter, so a generic plan cannot
-- match the expression; ferretdb_store.sh runs PostgreSQL with plan_cache_mode=force_custom_plan.
-- A history page (a find with a sort and a limit) does not go through @>: the store's FerretDB is
-- patched to send it as = and ranges with ORDER BY and LIMIT (ferretdb-sort-limit-pushdown.patch),
-- which FerretDB's own btree serves; the companion serves counts and finds without sort or limit.

CREATE SCHEMA IF NOT EXISTS ferretdb_companion;

CREATE OR REPLACE FUNCTION ferretdb_companion.add_gin(index_oid oid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    method text;
    table_oid oid;
    table_name text;
    schema_name text;
    first_key text;
    is_unique boolean;
    field text;
    gin_name text;
BEGIN
    SELECT am.amname, i.indrelid, t.relname, n.nspname, pg_get_indexdef(i.indexrelid, 1, true), i.indisunique
      INTO method, table_oid, table_name, schema_name, first_key, is_unique
      FROM pg_index i
      JOIN pg_class ic ON ic.oid = i.indexrelid
      JOIN pg_am am ON am.oid = ic.relam
      JOIN pg_class t ON t.oid = i.indrelid
      JOIN pg_namespace n ON n.oid = t.relnamespace
     WHERE i.indexrelid = index_oid;
    -- Only FerretDB's non-unique btrees on a document field (not its metadata table, not _id, and
    -- not the GIN indexes made here, which fire this trigger again).
    IF method IS DISTINCT FROM 'btree' OR is_unique OR table_name = '_ferretdb_database_metadata'
       OR NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = table_oid AND attname = '_jsonb') THEN
        RETURN;
    END IF;
    field := substring(first_key FROM '^\(_jsonb -> ''((?:[^'']|'''')*)''::text\)$');
    field := replace(field, '''''', '''');
    IF field IS NULL OR field = '_id' THEN
        RETURN;
    END IF;
    -- fastupdate off: with it on, new entries wait in a pending list that every query scans
    -- until a vacuum merges it, so history got slower right after purchases were written.
    gin_name := left(table_name, 40) || '_' || left(md5(field), 8) || '_gin';
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I.%I USING gin ((_jsonb -> %L) jsonb_path_ops) '
                   'WITH (fastupdate = off)', gin_name, schema_name, table_name, field);
    EXECUTE format('ALTER INDEX %I.%I SET (fastupdate = off)', schema_name, gin_name);
END
$$;

CREATE OR REPLACE FUNCTION ferretdb_companion.on_create_index() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    created record;
BEGIN
    FOR created IN SELECT objid FROM pg_event_trigger_ddl_commands() WHERE object_type = 'index' LOOP
        PERFORM ferretdb_companion.add_gin(created.objid);
    END LOOP;
END
$$;

DROP EVENT TRIGGER IF EXISTS ferretdb_companion_gin;
CREATE EVENT TRIGGER ferretdb_companion_gin ON ddl_command_end WHEN TAG IN ('CREATE INDEX')
    EXECUTE FUNCTION ferretdb_companion.on_create_index();

-- Indexes made before this file was applied (a data folder from an earlier version) get theirs now.
DO $$
BEGIN
    PERFORM ferretdb_companion.add_gin(i.indexrelid)
       FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'ferretdb_companion');
END
$$;
