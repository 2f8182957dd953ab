SET lock_timeout = '500ms';  -- below deadlock_timeout (1s): the migration gives way
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
-- words are the document's distinct tokens, sorted: its maximal runs of letters and digits
-- ([[:alnum:]] of the database's locale; regexp_replace then string_to_array is 1.5x faster
-- than regexp_split_to_table here); name_words those of the title alone (a match there ranks
-- before the same match elsewhere). Search matches query words against these words by
-- pg_trgm similarity (docs/search.md); the word index below answers it.
CREATE MATERIALIZED VIEW mv_search_index AS
SELECT kind, entity_id, title, subtitle, document,
       ARRAY(SELECT DISTINCT word
             FROM unnest(string_to_array(regexp_replace(document, '[^[:alnum:]]+', ' ', 'g'),
                                         ' ')) AS word
             WHERE word <> ''
             ORDER BY word)                                               AS words,
       ARRAY(SELECT DISTINCT word
             FROM unnest(string_to_array(regexp_replace(lower(title), '[^[:alnum:]]+', ' ', 'g'),
                                         ' ')) AS word
             WHERE word <> ''
             ORDER BY word)                                               AS name_words,
       popularity
FROM (
    SELECT 'project'::text                                                AS kind,
           p.id                                                           AS entity_id,
           p.title                                                        AS title,
           p.tagline                                                      AS subtitle,
           lower(concat_ws(' ', p.title, p.tagline, array_to_string(p.tags, ' '))) AS document,
           coalesce(v.score, 0)::bigint                                   AS popularity
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
) entities
WITH DATA;

CREATE UNIQUE INDEX mv_search_index_kind_entity_idx ON mv_search_index (kind, entity_id);

-- ------------------------------------------------------------------ the word index

-- Derived from mv_search_index, in the transaction of each of its refreshes
-- (opskit_search_words_sync(), called by opskit's refresh right after the view's), so readers
-- see the view and its word index change together:
--   search_words    the dictionary: each distinct word with the number of documents using it;
--                   a word no document uses any more is deleted. Its trigram index finds the
--                   words similar to a query word.
--   search_postings one row per (word, document) with the document's popularity: a word's
--                   documents, those with it in their title first, then most popular first,
--                   are one index range scan.
--   search_synced   the view's words, name_words and popularity as the postings reflect
--                   them: the sync diffs the view against it and rewrites only what changed.
CREATE TABLE search_words (
    word      text PRIMARY KEY,
    documents integer NOT NULL
);

CREATE TABLE search_postings (
    word       text    NOT NULL,
    in_name    boolean NOT NULL,  -- the word is in the document's title
    popularity bigint  NOT NULL,
    kind       text   NOT NULL,
    entity_id  bigint NOT NULL
);

CREATE TABLE search_synced (
    kind       text   NOT NULL,
    entity_id  bigint NOT NULL,
    words      text[] NOT NULL,
    name_words text[] NOT NULL,
    popularity bigint NOT NULL,
    PRIMARY KEY (kind, entity_id)
);

-- The diff of the view against search_synced, applied to the three tables: documents that
-- appeared, vanished, or whose words or popularity changed. A posting's key holds the
-- popularity, so a changed popularity moves every posting of the document; otherwise only the
-- postings that came, went or moved in or out of the title. Costs a join of the view with search_synced (a row per entity)
-- plus the changed rows; a per-key maintained view would pass the changed keys instead.
CREATE FUNCTION opskit_search_words_sync() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    emptied text[];
BEGIN
    CREATE TEMP TABLE search_changed ON COMMIT DROP AS
    SELECT coalesce(v.kind, s.kind)           AS kind,
           coalesce(v.entity_id, s.entity_id) AS entity_id,
           coalesce(s.words, '{}')            AS old_words,
           coalesce(s.name_words, '{}')       AS old_name_words,
           s.popularity                       AS old_popularity,
           coalesce(v.words, '{}')            AS new_words,
           coalesce(v.name_words, '{}')       AS new_name_words,
           v.popularity                       AS new_popularity
    FROM mv_search_index v
    FULL JOIN search_synced s ON s.kind = v.kind AND s.entity_id = v.entity_id
    WHERE v.words IS DISTINCT FROM s.words OR v.name_words IS DISTINCT FROM s.name_words
       OR v.popularity IS DISTINCT FROM s.popularity;
    ANALYZE search_changed;

    -- A posting is kept when the document still has the word, with the same popularity and
    -- in_name: a test per row (arrays of a few dozen words), no set operation over all postings.
    DELETE FROM search_postings p
    USING search_changed c, unnest(c.old_words) AS old(word)
    WHERE NOT (old.word = ANY (c.new_words) AND c.new_popularity = c.old_popularity
               AND (old.word = ANY (c.new_name_words)) = (old.word = ANY (c.old_name_words)))
      AND p.word = old.word AND p.in_name = (old.word = ANY (c.old_name_words))
      AND p.popularity = c.old_popularity AND p.kind = c.kind AND p.entity_id = c.entity_id;

    INSERT INTO search_postings (word, in_name, popularity, kind, entity_id)
    SELECT word, word = ANY (c.new_name_words), c.new_popularity, c.kind, c.entity_id
    FROM search_changed c, unnest(c.new_words) AS word
    WHERE NOT (word = ANY (c.old_words) AND c.old_popularity IS NOT DISTINCT FROM c.new_popularity
               AND (word = ANY (c.old_name_words)) = (word = ANY (c.new_name_words)));

    WITH counted AS (
        INSERT INTO search_words AS d (word, documents)
        SELECT word, sum(delta)
        FROM (
            SELECT word, 1 AS delta FROM search_changed c, unnest(c.new_words) AS word
            UNION ALL
            SELECT word, -1 FROM search_changed c, unnest(c.old_words) AS word
        ) deltas
        GROUP BY word
        HAVING sum(delta) <> 0
        ON CONFLICT (word) DO UPDATE SET documents = d.documents + excluded.documents
        RETURNING word, documents
    )
    SELECT array_agg(word) INTO emptied FROM counted WHERE documents = 0;
    DELETE FROM search_words WHERE word = ANY (emptied);  -- no document uses them any more

    DELETE FROM search_synced s
    USING search_changed c
    WHERE s.kind = c.kind AND s.entity_id = c.entity_id AND c.new_popularity IS NULL;
    INSERT INTO search_synced AS s (kind, entity_id, words, name_words, popularity)
    SELECT kind, entity_id, new_words, new_name_words, new_popularity
    FROM search_changed
    WHERE new_popularity IS NOT NULL
    ON CONFLICT (kind, entity_id) DO UPDATE
    SET words = excluded.words, name_words = excluded.name_words,
        popularity = excluded.popularity;

    DROP TABLE search_changed;
END
$$;

SELECT opskit_search_words_sync();

-- Built after the first sync filled the tables: one sort each instead of row-by-row upkeep.
CREATE UNIQUE INDEX search_postings_word_rank_idx
    ON search_postings (word, in_name DESC, popularity DESC, kind, entity_id);
-- Only words without a digit match by similarity (a word with one, an id or a version, only
-- matches itself: the primary key finds it). Usernames like ada_adams12345 would otherwise put
-- a word per user in this index, thousands of them sharing a prefix's trigrams with a query.
CREATE INDEX search_words_word_trgm_idx ON search_words USING gin (word gin_trgm_ops)
    WHERE word !~ '[0-9]';

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
LOCK TABLE intro_requests, investor_profiles IN SHARE ROW EXCLUSIVE MODE;
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
