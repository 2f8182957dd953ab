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

-- The title words a typo set is made of (opskit/benchmarking/typos.py): live projects' words of
-- min_length letters or more (no digit), as search splits them.
-- name: bench_typo_words --
SELECT word
FROM (SELECT DISTINCT lower(word) AS word
      FROM projects, regexp_split_to_table(title, '[^[:alnum:]]+') AS word
      WHERE deleted_at IS NULL) w
WHERE length(word) >= %(min_length)s AND word !~ '[0-9]'
ORDER BY md5(word);

-- Conversations with unread messages: (reader, other user, the unread message ids). Each bench
-- column marks them read; the ids put them back to unread before the next column
-- (reset_read_messages), so every column does the same writes.
-- name: bench_unread_pairs --
SELECT recipient_id, sender_id, array_agg(id) AS message_ids
FROM messages
WHERE read_at IS NULL
GROUP BY recipient_id, sender_id
ORDER BY md5(recipient_id::text || ':' || sender_id::text)
LIMIT 500;

-- name: reset_read_messages --
UPDATE messages SET read_at = NULL WHERE id = ANY (%(message_ids)s) AND read_at IS NOT NULL;

-- Pending intro requests (id, target) each bench column answers once; reset_pending_intros makes
-- them pending again before the next column.
-- name: bench_pending_intros --
SELECT id, target_id FROM intro_requests WHERE status = 'pending' ORDER BY md5(id::text) LIMIT 1200;

-- name: reset_pending_intros --
UPDATE intro_requests SET status = 'pending', responded_at = NULL
WHERE id = ANY (%(intro_ids)s) AND status <> 'pending';

-- Whether the database holds the app's tables with some users in them.
-- name: has_app_tables --
SELECT to_regclass('users') IS NOT NULL;

-- name: has_users --
SELECT EXISTS (SELECT FROM users);
