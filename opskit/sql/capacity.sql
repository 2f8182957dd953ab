-- `opskit capacity`: the connections the API it starts may take.

-- name: connection_budget --
SELECT current_setting('max_connections')::int AS max_connections,
       (SELECT count(*) FROM pg_stat_activity)::int AS in_use;
