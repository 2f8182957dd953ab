-- What a load test needs from the database: the run's fixture (real ids, tokens' users, search
-- terms) and the environment facts recorded in meta.json. Blocks are loaded by opskit.sql.queries().

-- name: fixture_users --
-- Builders to sign in as, in a fixed pseudo-random order, each with people they exchanged
-- messages with (recipients of their messages, senders to mark as read).
SELECT u.id,
       coalesce(
           ARRAY(SELECT DISTINCT o.other
                 FROM (SELECT m.recipient_id AS other FROM messages m WHERE m.sender_id = u.id
                       UNION ALL
                       SELECT m.sender_id FROM messages m WHERE m.recipient_id = u.id
                       LIMIT 50) AS o
                 WHERE o.other <> u.id
                 ORDER BY o.other),
           '{}') AS peers
FROM users u
WHERE u.role = 'builder'
ORDER BY md5(u.id::text)
LIMIT %(limit)s;

-- name: fixture_project_ids --
SELECT id FROM projects WHERE deleted_at IS NULL ORDER BY md5(id::text) LIMIT %(limit)s;

-- name: fixture_chain_slugs --
SELECT slug FROM chains ORDER BY slug LIMIT %(limit)s;

-- name: fixture_title_words --
-- Distinct words of live project titles, the words people search for.
SELECT DISTINCT lower(word) AS word
FROM (SELECT title FROM projects WHERE deleted_at IS NULL ORDER BY id LIMIT 5000) AS p,
     regexp_split_to_table(p.title, '\s+') AS word
WHERE length(word) >= 3
ORDER BY 1
LIMIT %(limit)s;

-- name: server_version --
SELECT current_setting('server_version');

-- name: server_settings --
SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY (%(names)s) ORDER BY name;
