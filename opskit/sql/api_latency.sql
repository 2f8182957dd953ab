-- What `opskit bench-api` sends: real ids, slugs and words from the database, in a fixed
-- pseudo-random order (md5 of the id) so every run and both modes ask for the same things.

-- name: bench_users --
SELECT id FROM users ORDER BY md5(id::text) LIMIT 200;

-- name: bench_projects --
SELECT id FROM projects WHERE deleted_at IS NULL ORDER BY md5(id::text) LIMIT 500;

-- name: bench_chain_slugs --
SELECT slug FROM chains ORDER BY md5(id::text) LIMIT 100;

-- name: bench_title_words --
SELECT word
FROM (SELECT DISTINCT lower(regexp_split_to_table(title, '\s+')) AS word FROM projects) w
WHERE length(word) >= 3
ORDER BY md5(word)
LIMIT 40;

-- Whether the database holds the app's tables with some users in them.
-- name: has_app_tables --
SELECT to_regclass('users') IS NOT NULL;

-- name: has_users --
SELECT EXISTS (SELECT FROM users);
