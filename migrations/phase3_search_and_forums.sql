-- opskit: no-transaction
SET lock_timeout = '500ms';  -- below deadlock_timeout (1s): the migration gives way
SET statement_timeout = '1h';  -- the word index's first build: ~13 min at large on a loaded machine

-- phase3_search_and_forums: trigram search over projects, people and chains, the chain forum
-- listing and the investors directory (docs/interface.md §7). Same design as phase2: tables maintained
-- per key from phase2's change log, one definition each (<relation>_def, <relation>_keys),
-- triggers committed before the builds. Needs phase2's change log, and phase1's project_stats
-- (a project's popularity, as in phase2).

CREATE EXTENSION IF NOT EXISTS pg_trgm;

INSERT INTO mv_change_routes (entity, view_name) VALUES
    ('project', 'mv_search_index'),
    ('project_votes', 'mv_search_index'),
    ('user', 'mv_search_index'),
    ('followee', 'mv_search_index'),
    ('chain', 'mv_search_index'),
    ('chain_members', 'mv_search_index'),
    ('post', 'mv_chain_posts'),
    ('post_replies', 'mv_chain_posts'),
    ('chain', 'mv_chain_posts'),
    ('user', 'mv_chain_posts'),
    ('user', 'mv_investors_directory'),
    ('followee', 'mv_investors_directory'),
    ('intro_target', 'mv_investors_directory'),
    ('investor', 'mv_investors_directory')
ON CONFLICT DO NOTHING;

-- The two tables no phase-2 relation reads: intro_requests 'intro_target' target_id,
-- investor_profiles 'investor' user_id (phase2 logs the rest).
CREATE OR REPLACE FUNCTION opskit_mv_log_intro_requests() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mv_change_log (changed_at, entity, entity_id)
    SELECT clock_timestamp(), 'intro_target', k
    FROM (VALUES (NEW.target_id), (OLD.target_id)) AS c (k)
    WHERE k IS NOT NULL;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION opskit_mv_log_investor_profiles() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mv_change_log (changed_at, entity, entity_id)
    SELECT clock_timestamp(), 'investor', k FROM (VALUES (NEW.user_id), (OLD.user_id)) AS c (k)
    WHERE k IS NOT NULL;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS trg_opskit_mvlog_intro_requests ON intro_requests;
CREATE TRIGGER trg_opskit_mvlog_intro_requests
    AFTER INSERT OR UPDATE OR DELETE ON intro_requests
    FOR EACH ROW EXECUTE FUNCTION opskit_mv_log_intro_requests();
DROP TRIGGER IF EXISTS trg_opskit_mvlog_intro_requests_truncate ON intro_requests;
CREATE TRIGGER trg_opskit_mvlog_intro_requests_truncate
    AFTER TRUNCATE ON intro_requests FOR EACH STATEMENT EXECUTE FUNCTION opskit_mv_log_truncate();
DROP TRIGGER IF EXISTS trg_opskit_mvlog_investor_profiles ON investor_profiles;
CREATE TRIGGER trg_opskit_mvlog_investor_profiles
    AFTER INSERT OR UPDATE OR DELETE ON investor_profiles
    FOR EACH ROW EXECUTE FUNCTION opskit_mv_log_investor_profiles();
DROP TRIGGER IF EXISTS trg_opskit_mvlog_investor_profiles_truncate ON investor_profiles;
CREATE TRIGGER trg_opskit_mvlog_investor_profiles_truncate
    AFTER TRUNCATE ON investor_profiles
    FOR EACH STATEMENT EXECUTE FUNCTION opskit_mv_log_truncate();

-- ------------------------------------------------------------------ mv_search_index

-- One row per searchable entity, keyed by (kind, entity_id). document is the lower-cased,
-- space-separated searchable text (NULL parts skipped):
--   project: title, tagline, tags          (non-deleted projects; popularity = score)
--   builder: username, display_name, bio   (every user;              popularity = followers)
--   chain:   name, slug, description       (every chain;             popularity = members)
-- words are the document's distinct tokens, sorted: its maximal runs of letters and digits
-- ([[:alnum:]] of the database's locale); name_words those of the title alone (a match there
-- ranks before the same match elsewhere). Search matches query words against these words by
-- pg_trgm similarity (docs/search.md); the word index below answers it.
CREATE TABLE IF NOT EXISTS mv_search_index (
    kind       text NOT NULL,
    entity_id  bigint NOT NULL,
    title      text,
    subtitle   text,
    document   text,
    words      text[],
    name_words text[],
    popularity bigint
);

-- keys of kind k are those of kinds[i] = k; with NULL keys every row. Each branch gets its
-- kind's keys as one array (= ANY (ARRAY(...))), so it probes its indexes.
CREATE OR REPLACE FUNCTION mv_search_index_def(kinds text[], keys bigint[])
RETURNS SETOF mv_search_index
LANGUAGE sql STABLE AS $$
SELECT e.kind, e.entity_id, e.title, e.subtitle, e.document,
       ARRAY(SELECT DISTINCT word
             FROM unnest(string_to_array(regexp_replace(e.document, '[^[:alnum:]]+', ' ', 'g'),
                                         ' ')) AS word
             WHERE word <> ''
             ORDER BY word),
       ARRAY(SELECT DISTINCT word
             FROM unnest(string_to_array(regexp_replace(lower(e.title), '[^[:alnum:]]+', ' ',
                                                        'g'), ' ')) AS word
             WHERE word <> ''
             ORDER BY word),
       e.popularity
FROM (
    SELECT 'project'::text,
           p.id,
           p.title,
           p.tagline,
           lower(concat_ws(' ', p.title, p.tagline, array_to_string(p.tags, ' '))),
           st.upvotes - st.downvotes
    FROM projects p
    CROSS JOIN LATERAL (SELECT * FROM project_stats ps WHERE ps.project_id = p.id OFFSET 0) st
    WHERE p.deleted_at IS NULL
      AND (keys IS NULL
           OR p.id = ANY (ARRAY(SELECT k.key FROM unnest(kinds, keys) AS k (kind, key)
                             WHERE k.kind = 'project')))
    UNION ALL
    SELECT 'builder'::text,
           u.id,
           u.display_name,
           u.username,
           lower(concat_ws(' ', u.username, u.display_name, u.bio)),
           coalesce(f.followers_count, 0)::bigint
    FROM users u
    LEFT JOIN (
        SELECT followee_id, count(*) AS followers_count
        FROM follows
        WHERE keys IS NULL
           OR followee_id = ANY (ARRAY(SELECT k.key FROM unnest(kinds, keys) AS k (kind, key)
                                 WHERE k.kind = 'builder'))
        GROUP BY followee_id
    ) f ON f.followee_id = u.id
    WHERE keys IS NULL
       OR u.id = ANY (ARRAY(SELECT k.key FROM unnest(kinds, keys) AS k (kind, key)
                             WHERE k.kind = 'builder'))
    UNION ALL
    SELECT 'chain'::text,
           c.id,
           c.name,
           c.slug,
           lower(concat_ws(' ', c.name, c.slug, c.description)),
           coalesce(m.members_count, 0)::bigint
    FROM chains c
    LEFT JOIN (
        SELECT chain_id, count(*) AS members_count
        FROM chain_members
        WHERE keys IS NULL
           OR chain_id = ANY (ARRAY(SELECT k.key FROM unnest(kinds, keys) AS k (kind, key)
                              WHERE k.kind = 'chain'))
        GROUP BY chain_id
    ) m ON m.chain_id = c.id
    WHERE keys IS NULL
       OR c.id = ANY (ARRAY(SELECT k.key FROM unnest(kinds, keys) AS k (kind, key)
                             WHERE k.kind = 'chain'))
) e (kind, entity_id, title, subtitle, document, popularity)
$$;

CREATE OR REPLACE FUNCTION mv_search_index_keys(entities text[], ids bigint[])
RETURNS TABLE (kind text, key bigint)
LANGUAGE sql STABLE AS $$
SELECT DISTINCT
       CASE WHEN entity IN ('project', 'project_votes') THEN 'project'
            WHEN entity IN ('user', 'followee') THEN 'builder'
            ELSE 'chain' END,
       id
FROM unnest(entities, ids) AS c (entity, id)
WHERE entity IN ('project', 'project_votes', 'user', 'followee', 'chain', 'chain_members')
$$;

-- ------------------------------------------------------------------ the word index

-- Derived from mv_search_index, in the transaction of each batch that changes its rows, for the
-- batch's keys (opskit_search_words_sync(kinds, keys), called by opskit's refresh right after
-- the rows; NULL keys after a full build), so readers see both change together:
--   search_words    the dictionary: each distinct word with the number of documents using it;
--                   a word no document uses any more is deleted. Its trigram index finds the
--                   words similar to a query word.
--   search_postings one row per (word, document) with the document's popularity: a word's
--                   documents, those with it in their title first, then most popular first,
--                   are one index range scan.
--   search_synced   the view's words, name_words and popularity as the postings reflect
--                   them: the sync diffs the view against it and rewrites only what changed.
CREATE TABLE IF NOT EXISTS search_words (
    word      text PRIMARY KEY,
    documents integer NOT NULL
);

CREATE TABLE IF NOT EXISTS search_postings (
    word       text    NOT NULL,
    in_name    boolean NOT NULL,  -- the word is in the document's title
    popularity bigint  NOT NULL,
    kind       text   NOT NULL,
    entity_id  bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS search_synced (
    kind       text   NOT NULL,
    entity_id  bigint NOT NULL,
    words      text[] NOT NULL,
    name_words text[] NOT NULL,
    popularity bigint NOT NULL,
    PRIMARY KEY (kind, entity_id)
);

-- The diff of the view's rows of `kinds`/`keys` (every row when NULL) against search_synced,
-- applied to the three tables: documents that appeared, vanished, or whose words or popularity
-- changed. A posting's key holds the popularity, so a changed popularity moves every posting
-- of the document; otherwise only the postings that came, went or moved in or out of the
-- title. Costs follow the keys given.
CREATE OR REPLACE FUNCTION opskit_search_words_sync(kinds text[], keys bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    emptied text[];
BEGIN
    -- The pair test alone, a subquery under OR, stays a filter even once `keys IS NULL` is
    -- folded away: every batch read all of mv_search_index and search_synced (1.2M rows each
    -- at `large`, 5 s). The two `= ANY` probe their primary keys; the pair test then drops
    -- the pairs of one key with another's kind.
    CREATE TEMP TABLE search_changed ON COMMIT DROP AS
    SELECT coalesce(v.kind, s.kind)           AS kind,
           coalesce(v.entity_id, s.entity_id) AS entity_id,
           coalesce(s.words, '{}')            AS old_words,
           coalesce(s.name_words, '{}')       AS old_name_words,
           s.popularity                       AS old_popularity,
           coalesce(v.words, '{}')            AS new_words,
           coalesce(v.name_words, '{}')       AS new_name_words,
           v.popularity                       AS new_popularity
    FROM (SELECT * FROM mv_search_index i
          WHERE keys IS NULL
             OR (i.kind = ANY (kinds) AND i.entity_id = ANY (keys)
                 AND (i.kind, i.entity_id) IN (SELECT * FROM unnest(kinds, keys)))) v
    FULL JOIN (SELECT * FROM search_synced y
               WHERE keys IS NULL
                  OR (y.kind = ANY (kinds) AND y.entity_id = ANY (keys)
                      AND (y.kind, y.entity_id) IN (SELECT * FROM unnest(kinds, keys)))) s
        ON s.kind = v.kind AND s.entity_id = v.entity_id
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

-- ------------------------------------------------------------------ mv_chain_posts

CREATE TABLE IF NOT EXISTS mv_chain_posts (
    post_id          bigint NOT NULL,
    chain_id         bigint,
    chain_slug       text,
    author_id        bigint,
    author_username  text,
    title            text,
    body_preview     text,
    created_at       timestamptz,
    replies_count    bigint,
    last_reply_at    timestamptz,
    last_activity_at timestamptz
);

CREATE OR REPLACE FUNCTION mv_chain_posts_def(kinds text[], keys bigint[])
RETURNS SETOF mv_chain_posts
LANGUAGE sql STABLE AS $$
SELECT cp.id,
       cp.chain_id,
       c.slug,
       cp.author_id,
       u.username,
       cp.title,
       left(cp.body, 200),
       cp.created_at,
       coalesce(r.replies_count, 0),
       r.last_reply_at,
       coalesce(r.last_reply_at, cp.created_at)
FROM chain_posts cp
JOIN chains c ON c.id = cp.chain_id
JOIN users u ON u.id = cp.author_id
LEFT JOIN (
    SELECT post_id, count(*) AS replies_count, max(created_at) AS last_reply_at
    FROM chain_post_replies
    WHERE keys IS NULL OR post_id = ANY (keys)
    GROUP BY post_id
) r ON r.post_id = cp.id
WHERE keys IS NULL OR cp.id = ANY (keys)
$$;

CREATE OR REPLACE FUNCTION mv_chain_posts_keys(entities text[], ids bigint[])
RETURNS TABLE (kind text, key bigint)
LANGUAGE sql STABLE AS $$
WITH changed AS (SELECT * FROM unnest(entities, ids) AS c (entity, id))
SELECT 'post', id FROM changed WHERE entity IN ('post', 'post_replies')
UNION
SELECT 'post', cp.id
FROM chain_posts cp JOIN changed ON entity = 'chain' AND cp.chain_id = changed.id
UNION
SELECT 'post', cp.id
FROM chain_posts cp JOIN changed ON entity = 'user' AND cp.author_id = changed.id
$$;

-- ------------------------------------------------------------------ mv_investors_directory

-- acceptance_rate = accepted / (accepted + declined), exact numeric; NULL when none answered.
CREATE TABLE IF NOT EXISTS mv_investors_directory (
    user_id          bigint NOT NULL,
    username         text,
    display_name     text,
    firm             text,
    check_size_min   bigint,
    check_size_max   bigint,
    focus            text,
    intros_received  bigint,
    intros_accepted  bigint,
    acceptance_rate  numeric,
    followers_count  bigint
);

CREATE OR REPLACE FUNCTION mv_investors_directory_def(kinds text[], keys bigint[])
RETURNS SETOF mv_investors_directory
LANGUAGE sql STABLE AS $$
SELECT u.id,
       u.username,
       u.display_name,
       ip.firm,
       ip.check_size_min,
       ip.check_size_max,
       ip.focus,
       coalesce(i.intros_received, 0),
       coalesce(i.intros_accepted, 0),
       i.intros_accepted::numeric / nullif(i.intros_answered, 0),
       coalesce(f.followers_count, 0)
FROM users u
LEFT JOIN investor_profiles ip ON ip.user_id = u.id
LEFT JOIN (
    SELECT target_id,
           count(*)                                                   AS intros_received,
           count(*) FILTER (WHERE status = 'accepted')                AS intros_accepted,
           count(*) FILTER (WHERE status IN ('accepted', 'declined')) AS intros_answered
    FROM intro_requests
    WHERE keys IS NULL OR target_id = ANY (keys)
    GROUP BY target_id
) i ON i.target_id = u.id
LEFT JOIN (
    SELECT followee_id, count(*) AS followers_count
    FROM follows
    WHERE keys IS NULL OR followee_id = ANY (keys)
    GROUP BY followee_id
) f ON f.followee_id = u.id
WHERE u.role = 'investor' AND (keys IS NULL OR u.id = ANY (keys))
$$;

CREATE OR REPLACE FUNCTION mv_investors_directory_keys(entities text[], ids bigint[])
RETURNS TABLE (kind text, key bigint)
LANGUAGE sql STABLE AS $$
SELECT DISTINCT 'user', id FROM unnest(entities, ids) AS c (entity, id)
WHERE entity IN ('user', 'followee', 'intro_target', 'investor')
$$;

-- ------------------------------------------------------------------ builds and indexes

-- First builds, after the triggers committed (see phase2).
DELETE FROM mv_search_index;
INSERT INTO mv_search_index SELECT * FROM mv_search_index_def(NULL, NULL);
SELECT opskit_search_words_sync(NULL, NULL);
DELETE FROM mv_chain_posts;
INSERT INTO mv_chain_posts SELECT * FROM mv_chain_posts_def(NULL, NULL);
DELETE FROM mv_investors_directory;
INSERT INTO mv_investors_directory SELECT * FROM mv_investors_directory_def(NULL, NULL);

CREATE UNIQUE INDEX IF NOT EXISTS mv_search_index_kind_entity_idx
    ON mv_search_index (kind, entity_id);
-- Built after the first sync filled the tables: one sort each instead of row-by-row upkeep.
CREATE UNIQUE INDEX IF NOT EXISTS search_postings_word_rank_idx
    ON search_postings (word, in_name DESC, popularity DESC, kind, entity_id);
-- Only words without a digit match by similarity (a word with one, an id or a version, only
-- matches itself: the primary key finds it). Usernames like ada_adams12345 would otherwise put
-- a word per user in this index, thousands of them sharing a prefix's trigrams with a query.
CREATE INDEX IF NOT EXISTS search_words_word_trgm_idx ON search_words USING gin (word gin_trgm_ops)
    WHERE word !~ '[0-9]';

CREATE UNIQUE INDEX IF NOT EXISTS mv_chain_posts_post_id_idx ON mv_chain_posts (post_id);
CREATE INDEX IF NOT EXISTS mv_chain_posts_slug_activity_idx
    ON mv_chain_posts (chain_slug, last_activity_at DESC, post_id DESC);
CREATE INDEX IF NOT EXISTS mv_chain_posts_chain_activity_idx
    ON mv_chain_posts (chain_id, last_activity_at DESC, post_id DESC);

CREATE UNIQUE INDEX IF NOT EXISTS mv_investors_directory_user_id_idx
    ON mv_investors_directory (user_id);
CREATE INDEX IF NOT EXISTS mv_investors_directory_followers_idx
    ON mv_investors_directory (followers_count DESC, user_id);

ANALYZE mv_search_index, search_words, search_postings, search_synced, mv_chain_posts,
    mv_investors_directory;
