-- The users and projects a workload on existing data picks from (opskit.workload.World).
-- Samples are ordered by a hash of (id, seed): the same seed picks the same rows.

-- name: sample_users --
SELECT id FROM users ORDER BY md5(id::text || ':' || %(seed)s::text) LIMIT %(n)s;

-- name: sample_projects --
-- The most voted live project first (the hot one), then a sample of the other live projects.
WITH hot AS (
    SELECT v.project_id AS id
    FROM votes v
    JOIN projects p ON p.id = v.project_id AND p.deleted_at IS NULL
    GROUP BY v.project_id
    ORDER BY count(*) DESC, v.project_id
    LIMIT 1
)
SELECT id FROM (
    SELECT id, 0 AS rank FROM hot
    UNION ALL
    (SELECT id, 1 AS rank FROM projects
     WHERE deleted_at IS NULL AND id NOT IN (SELECT id FROM hot)
     ORDER BY md5(id::text || ':' || %(seed)s::text)
     LIMIT %(n)s)
) AS picked
ORDER BY rank, id
LIMIT %(n)s;

-- name: last_ids --
SELECT coalesce((SELECT max(id) FROM users), 0), coalesce((SELECT max(id) FROM projects), 0);
