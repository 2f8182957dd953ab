SET lock_timeout = '5s';
SET statement_timeout = '15min';

-- phase3_search_and_forums: trigram search over projects, people and chains, the chain forum
-- listing and the investors directory (docs/interface.md §7). Same rules as phase2: app tables
-- only, deterministic views with a plain unique index each, enqueue triggers created last. Needs
-- phase2's queue tables and opskit_mv_enqueue_refresh(), not phase1.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- ------------------------------------------------------------------ mv_search_index

-- One row per searchable entity. document is the lower-cased, space-separated searchable text
-- (NULL parts skipped):
--   project: title, tagline, tags          (non-deleted projects; popularity = score)
--   builder: username, display_name, bio   (every user;              popularity = followers)
--   chain:   name, slug, description       (every chain;             popularity = members)
-- Query with `document LIKE '%' || lower(q) || '%'` (or `%` / similarity()) on the trigram index.
CREATE MATERIALIZED VIEW mv_search_index AS
SELECT 'project'::text                                                    AS kind,
       p.id                                                               AS entity_id,
       p.title                                                            AS title,
       p.tagline                                                          AS subtitle,
       lower(concat_ws(' ', p.title, p.tagline, array_to_string(p.tags, ' '))) AS document,
       coalesce(v.score, 0)::bigint                                       AS popularity
FROM projects p
LEFT JOIN (
    SELECT project_id,
           count(*) FILTER (WHERE vote_type = 'up') - count(*) FILTER (WHERE vote_type = 'down')
               AS score
    FROM votes
    GROUP BY project_id
) v ON v.project_id = p.id
WHERE p.deleted_at IS NULL
UNION ALL
SELECT 'builder'::text,
       u.id,
       u.display_name,
       u.username,
       lower(concat_ws(' ', u.username, u.display_name, u.bio)),
       coalesce(f.followers_count, 0)::bigint
FROM users u
LEFT JOIN (
    SELECT followee_id, count(*) AS followers_count FROM follows GROUP BY followee_id
) f ON f.followee_id = u.id
UNION ALL
SELECT 'chain'::text,
       c.id,
       c.name,
       c.slug,
       lower(concat_ws(' ', c.name, c.slug, c.description)),
       coalesce(m.members_count, 0)::bigint
FROM chains c
LEFT JOIN (
    SELECT chain_id, count(*) AS members_count FROM chain_members GROUP BY chain_id
) m ON m.chain_id = c.id
WITH DATA;

CREATE UNIQUE INDEX mv_search_index_kind_entity_idx ON mv_search_index (kind, entity_id);
CREATE INDEX mv_search_index_document_trgm_idx ON mv_search_index USING gin (document gin_trgm_ops);

-- ------------------------------------------------------------------ mv_chain_posts

CREATE MATERIALIZED VIEW mv_chain_posts AS
SELECT cp.id                                    AS post_id,
       cp.chain_id,
       c.slug                                   AS chain_slug,
       cp.author_id,
       u.username                               AS author_username,
       cp.title,
       left(cp.body, 200)                       AS body_preview,
       cp.created_at,
       coalesce(r.replies_count, 0)             AS replies_count,
       r.last_reply_at,
       coalesce(r.last_reply_at, cp.created_at) AS last_activity_at
FROM chain_posts cp
JOIN chains c ON c.id = cp.chain_id
JOIN users u ON u.id = cp.author_id
LEFT JOIN (
    SELECT post_id, count(*) AS replies_count, max(created_at) AS last_reply_at
    FROM chain_post_replies
    GROUP BY post_id
) r ON r.post_id = cp.id
WITH DATA;

CREATE UNIQUE INDEX mv_chain_posts_post_id_idx ON mv_chain_posts (post_id);
CREATE INDEX mv_chain_posts_slug_activity_idx
    ON mv_chain_posts (chain_slug, last_activity_at DESC, post_id DESC);
CREATE INDEX mv_chain_posts_chain_activity_idx
    ON mv_chain_posts (chain_id, last_activity_at DESC, post_id DESC);

-- ------------------------------------------------------------------ mv_investors_directory

-- acceptance_rate = accepted / (accepted + declined), exact numeric; NULL when none answered.
CREATE MATERIALIZED VIEW mv_investors_directory AS
SELECT u.id                                     AS user_id,
       u.username,
       u.display_name,
       ip.firm,
       ip.check_size_min,
       ip.check_size_max,
       ip.focus,
       coalesce(i.intros_received, 0)           AS intros_received,
       coalesce(i.intros_accepted, 0)           AS intros_accepted,
       i.intros_accepted::numeric / nullif(i.intros_answered, 0) AS acceptance_rate,
       coalesce(f.followers_count, 0)           AS followers_count
FROM users u
LEFT JOIN investor_profiles ip ON ip.user_id = u.id
LEFT JOIN (
    SELECT target_id,
           count(*)                                             AS intros_received,
           count(*) FILTER (WHERE status = 'accepted')          AS intros_accepted,
           count(*) FILTER (WHERE status IN ('accepted', 'declined')) AS intros_answered
    FROM intro_requests
    GROUP BY target_id
) i ON i.target_id = u.id
LEFT JOIN (
    SELECT followee_id, count(*) AS followers_count FROM follows GROUP BY followee_id
) f ON f.followee_id = u.id
WHERE u.role = 'investor'
WITH DATA;

CREATE UNIQUE INDEX mv_investors_directory_user_id_idx ON mv_investors_directory (user_id);
CREATE INDEX mv_investors_directory_followers_idx
    ON mv_investors_directory (followers_count DESC, user_id);

-- ------------------------------------------------------------------ refresh queue wiring

INSERT INTO mv_dependencies (view_name, source_table) VALUES
    ('mv_search_index', 'projects'),
    ('mv_search_index', 'votes'),
    ('mv_search_index', 'users'),
    ('mv_search_index', 'follows'),
    ('mv_search_index', 'chains'),
    ('mv_search_index', 'chain_members'),
    ('mv_chain_posts', 'chain_posts'),
    ('mv_chain_posts', 'chains'),
    ('mv_chain_posts', 'users'),
    ('mv_chain_posts', 'chain_post_replies'),
    ('mv_investors_directory', 'users'),
    ('mv_investors_directory', 'investor_profiles'),
    ('mv_investors_directory', 'intro_requests'),
    ('mv_investors_directory', 'follows');

-- Phase 2's triggers read mv_dependencies, so the rows above wire the new views to the tables
-- phase 2 already watches; only the two tables no phase-2 view reads need a trigger. Created last,
-- after the view builds, to keep the write-blocking trigger locks short.
CREATE TRIGGER trg_opskit_mvq_intro_requests
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON intro_requests
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_mv_enqueue_refresh();
CREATE TRIGGER trg_opskit_mvq_investor_profiles
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON investor_profiles
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_mv_enqueue_refresh();

-- Catch up writes that committed between the view builds and the triggers (see phase2).
INSERT INTO mv_refresh_queue (view_name, source_table)
SELECT DISTINCT view_name, 'phase3_search_and_forums'
FROM mv_dependencies
WHERE view_name IN ('mv_search_index', 'mv_chain_posts', 'mv_investors_directory');
