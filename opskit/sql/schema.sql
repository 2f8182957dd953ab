-- Catalog queries about the app's base schema. Blocks are loaded by opskit.sql.queries().

-- name: existing_tables --
SELECT c.relname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname = ANY (%(names)s);

-- name: table_fingerprint --
SELECT coalesce(md5(string_agg(row_md5, '' ORDER BY row_md5)), md5(''))
FROM (SELECT md5(t::text) AS row_md5 FROM {table} AS t) AS rows;

-- name: app_triggers --
SELECT t.tgrelid::regclass::text || '.' || t.tgname
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND n.nspname = current_schema() AND c.relname = ANY (%(names)s)
ORDER BY 1;

-- name: app_constraints --
-- Primary keys, unique constraints and foreign keys of the app tables, with their definitions,
-- so seeding can drop them and rebuild them in one pass after the bulk load.
SELECT con.conrelid::regclass::text AS table_name, con.conname, con.contype,
       pg_get_constraintdef(con.oid) AS definition
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relname = ANY (%(names)s) AND con.contype IN ('p', 'u', 'f')
ORDER BY con.contype, 1, 2;

-- name: app_plain_indexes --
-- Indexes of the app tables that no constraint owns.
SELECT i.indexrelid::regclass::text AS index_name, pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relname = ANY (%(names)s)
  AND NOT EXISTS (SELECT FROM pg_constraint con WHERE con.conindid = i.indexrelid)
ORDER BY 1;

-- name: identity_tables --
SELECT c.relname
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relname = ANY (%(names)s)
  AND a.attname = 'id' AND a.attidentity <> ''
ORDER BY 1;
