-- Catalog checks of `opskit verify`. Blocks are loaded by opskit.sql.queries().

-- name: trigger_state --
SELECT t.tgenabled FROM pg_trigger t WHERE NOT t.tgisinternal AND t.tgname = %(name)s LIMIT 1;

-- name: function_exists --
SELECT EXISTS (
    SELECT FROM pg_proc p WHERE p.proname = %(name)s AND p.pronamespace = current_schema()::regnamespace
);

-- name: index_valid --
SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%(name)s);

-- name: matview_state --
-- Populated, and with a unique index on plain columns without a predicate (REFRESH ... CONCURRENTLY).
SELECT m.ispopulated,
       EXISTS (SELECT FROM pg_index i
               WHERE i.indrelid = to_regclass(%(name)s) AND i.indisunique AND i.indisvalid
                 AND i.indexprs IS NULL AND i.indpred IS NULL)
FROM pg_matviews m
WHERE m.matviewname = %(name)s AND m.schemaname = current_schema();
