-- The HTTP API's queries (docs/interface.md §9), each read endpoint as a pair: `<name>_before`
-- answers from the normalized app tables with the joins and aggregates an app naturally writes;
-- `<name>_after` answers from phase 1's denormalized relations and the phase 2/3 views. Both
-- return the same columns, in the same order, with the same types, so the two modes give the
-- same JSON. Writes are one set of statements used by both modes.
--
-- Rules that keep the two modes identical:
--  * every ORDER BY ends with a unique key, so orders are total;
--  * the trending score for an instant as_of is
--      (upvotes - downvotes) / power(hours_since_created + 2, 1.8)   in double precision,
--    hours_since_created = greatest(as_of - created_at, 0) in hours, from date_part('epoch',
--    ...) (a float8; extract() computes in numeric, 4x slower per row). Before mode computes it
--    for the request's as_of (default now). After mode answers a request without as_of from the
--    scores its last refresh stored for its own instant (mv_feed_projects.scored_at, which the
--    answer carries as its as_of) and computes it here only for an explicit as_of;
--  * search matches words by pg_trgm similarity, the same definition in both modes (see the
--    search blocks), ranked by similarity desc, popularity desc, kind, id;
--  * connections run with TimeZone = UTC and an explicit pg_trgm.similarity_threshold.
-- `{order_by}` is replaced by a whitelisted ORDER BY clause (opskit/endpoints.py), never by
-- user text. Percent signs are doubled: every block runs with parameters.

-- ------------------------------------------------------------------ start-up

-- Which of the relations a mode reads are missing.
-- name: missing_relations --
SELECT coalesce(array_agg(name ORDER BY name), '{}') AS missing
FROM unnest(%(names)s::text[]) AS name
WHERE to_regclass(name) IS NULL;

-- ------------------------------------------------------------------ auth

-- name: user_exists --
SELECT EXISTS (SELECT FROM users WHERE id = %(user_id)s) AS user_exists;

-- ------------------------------------------------------------------ GET /api/users/stats

-- name: user_stats_before --
SELECT u.id AS user_id,
       (SELECT count(*) FROM projects p
        WHERE p.owner_id = u.id AND p.deleted_at IS NULL) AS projects_count,
       (SELECT count(*) FROM votes v JOIN projects p ON p.id = v.project_id
        WHERE p.owner_id = u.id AND p.deleted_at IS NULL AND v.vote_type = 'up')
           AS upvotes_received,
       (SELECT count(*) FROM votes v JOIN projects p ON p.id = v.project_id
        WHERE p.owner_id = u.id AND p.deleted_at IS NULL AND v.vote_type = 'down')
           AS downvotes_received,
       (SELECT count(*) FROM comments c JOIN projects p ON p.id = c.project_id
        WHERE p.owner_id = u.id AND p.deleted_at IS NULL) AS comments_received,
       (SELECT count(*) FROM votes v WHERE v.user_id = u.id) AS votes_cast,
       (SELECT count(*) FROM follows f WHERE f.followee_id = u.id) AS followers_count,
       (SELECT count(*) FROM follows f WHERE f.follower_id = u.id) AS following_count,
       (SELECT count(*) FROM messages m
        WHERE m.recipient_id = u.id AND m.read_at IS NULL) AS unread_messages,
       (SELECT count(*) FROM intro_requests i
        WHERE i.target_id = u.id AND i.status = 'pending') AS pending_intros_received
FROM users u
WHERE u.id = %(user_id)s;

-- name: user_stats_after --
SELECT user_id, projects_count, upvotes_received, downvotes_received, comments_received,
       votes_cast, followers_count, following_count, unread_messages, pending_intros_received
FROM user_dashboard_stats
WHERE user_id = %(user_id)s;

-- ------------------------------------------------------------------ GET /api/projects

-- name: feed_before --
SELECT p.id,
       p.title,
       p.tagline,
       p.tags,
       p.owner_id,
       u.username AS owner_username,
       u.display_name AS owner_display_name,
       p.chain_id,
       c.slug AS chain_slug,
       c.name AS chain_name,
       p.created_at,
       coalesce(vs.upvotes, 0) AS upvotes,
       coalesce(vs.downvotes, 0) AS downvotes,
       coalesce(vs.upvotes, 0) - coalesce(vs.downvotes, 0) AS score,
       (SELECT count(*) FROM comments cm WHERE cm.project_id = p.id) AS comments_count,
       (coalesce(vs.upvotes, 0) - coalesce(vs.downvotes, 0))
           / power(greatest(date_part('epoch', %(as_of)s::timestamptz - p.created_at)
                            / 3600, 0) + 2, 1.8::float8) AS trending_score
FROM projects p
JOIN users u ON u.id = p.owner_id
LEFT JOIN chains c ON c.id = p.chain_id
LEFT JOIN (
    SELECT project_id,
           count(*) FILTER (WHERE vote_type = 'up') AS upvotes,
           count(*) FILTER (WHERE vote_type = 'down') AS downvotes
    FROM votes
    GROUP BY project_id
) vs ON vs.project_id = p.id
WHERE p.deleted_at IS NULL
ORDER BY {order_by}
LIMIT %(limit)s OFFSET %(offset)s;

-- Without an explicit as_of (NULL) the trending score is the one the last refresh stored (the
-- same expression at scored_at gives the same float8), and trending pages are ordered by the
-- stored column, an index scan of mv_feed_projects_trending_idx (endpoints.py's
-- STORED_TRENDING_ORDER); an explicit as_of is ranked by feed_trending_as_of_after. Every
-- after-mode feed query also returns scored_at, the instant of the stored scores (endpoints.py
-- takes it off the rows). While the daemon moves the rows to a new instant, chunk by chunk
-- (mv_feed_scoring), they hold two: rescoring_from, read in the same snapshot, is then the
-- old one, and endpoints.py asks again with it as an explicit as_of.
-- name: feed_after --
SELECT project_id AS id,
       title,
       tagline,
       tags,
       owner_id,
       owner_username,
       owner_display_name,
       chain_id,
       chain_slug,
       chain_name,
       created_at,
       upvotes,
       downvotes,
       score,
       comments_count,
       CASE WHEN %(as_of)s::timestamptz IS NULL THEN trending_score
            ELSE score / power(greatest(date_part('epoch', %(as_of)s::timestamptz - created_at)
                                        / 3600, 0) + 2, 1.8::float8)
       END AS trending_score,
       scored_at,
       (SELECT scored_at FROM mv_feed_scoring WHERE rescoring_to IS NOT NULL) AS rescoring_from
FROM mv_feed_projects
ORDER BY {order_by}
LIMIT %(limit)s OFFSET %(offset)s;

-- The instant the stored scores are for, when a page past the end has no row to carry it.
-- name: feed_scored_at_after --
SELECT scored_at FROM mv_feed_projects LIMIT 1;

-- Trending in after mode for an explicit as_of, without scoring every project. A project p older than the `recent_scan`
-- newest ones has hours(p) >= hours(oldest recent), so trending(p) <= score(p) / power(hours(oldest
-- recent) + 2, 1.8). If the recent projects already hold `wanted` (offset + page size + 1)
-- projects scoring at least tau, an older project can only reach the page when
-- score(p) >= tau * power(hours(oldest recent) + 2, 1.8) (min_score, lowered by 1e-9 against
-- rounding). So the page is exactly the same as feed_after's when ranked over the candidates:
-- the recent projects plus those with score >= min_score (any superset of the true top
-- `wanted` ranks them the same). Of the recent ones below min_score only those whose trending
-- score is at least tau are kept: `wanted` recent ones already reach tau, so one below it cannot
-- rank among the first `wanted` (about 450 fewer rows to rank at medium, a tenth of its time).
-- Each recent project's trending score is computed once. Without `wanted` recent projects, or
-- with tau <= 0 (for a negative score, older means closer to 0: the bound fails), min_score is
-- the lowest score: every project is ranked.
-- Cost: the candidates (about 600 at medium) are ranked from two covering indexes of
-- phase 4 (project_id, created_at, score: index-only scans once autovacuum has visited the
-- view), and only the page's rows are read from the view's heap. Reading every candidate's wide
-- row, about one heap page each, made this query take 8 ms whenever those pages had left
-- shared_buffers.
-- name: feed_trending_as_of_after --
WITH recent AS MATERIALIZED (
    SELECT project_id, score,
           score / power(greatest(date_part('epoch', %(as_of)s::timestamptz - created_at)
                                  / 3600, 0) + 2, 1.8::float8) AS trending_score,
           created_at
    FROM mv_feed_projects
    ORDER BY created_at DESC, project_id DESC
    LIMIT %(recent_scan)s
), bounds AS (
    SELECT min(created_at) AS oldest,
           (SELECT trending_score
            FROM recent
            ORDER BY trending_score DESC
            OFFSET %(wanted)s - 1 LIMIT 1) AS tau
    FROM recent
), threshold AS (
    SELECT coalesce(
               CASE WHEN tau > 0 THEN
                   ceil(tau * power(greatest(date_part('epoch', %(as_of)s::timestamptz - oldest)
                                             / 3600, 0) + 2, 1.8::float8)
                        * (1 - 1e-9))::bigint
               END,
               (SELECT min(score) FROM mv_feed_projects)) AS min_score,
           tau
    FROM bounds
), candidates AS (
    SELECT project_id,
           score / power(greatest(date_part('epoch', %(as_of)s::timestamptz - created_at)
                                  / 3600, 0) + 2, 1.8::float8) AS trending_score
    FROM mv_feed_projects
    WHERE score >= (SELECT min_score FROM threshold)
    UNION ALL
    SELECT project_id, trending_score  -- the recent ones not already above that can still rank
    FROM recent
    WHERE score < (SELECT min_score FROM threshold)
      AND trending_score >= (SELECT tau FROM threshold)
), page AS (
    SELECT project_id, trending_score
    FROM candidates
    ORDER BY trending_score DESC, project_id DESC
    LIMIT %(limit)s OFFSET %(offset)s
)
SELECT f.project_id AS id,
       f.title,
       f.tagline,
       f.tags,
       f.owner_id,
       f.owner_username,
       f.owner_display_name,
       f.chain_id,
       f.chain_slug,
       f.chain_name,
       f.created_at,
       f.upvotes,
       f.downvotes,
       f.score,
       f.comments_count,
       page.trending_score,
       f.scored_at
FROM page
-- One index lookup per page row, also in the generic plan of the prepared statement, which
-- cannot know the LIMIT and would otherwise hash-join the whole view (LIMIT 1 keeps the
-- subquery from being flattened into such a join; project_id is unique).
CROSS JOIN LATERAL (
    SELECT * FROM mv_feed_projects WHERE project_id = page.project_id LIMIT 1
) f
ORDER BY page.trending_score DESC, f.project_id DESC;

-- has_upvoted of a page of projects. after mode asks the Redis vote cache (opskit/votecache.py)
-- and falls back to the database with its own query.
-- name: upvoted_among_before --
SELECT project_id
FROM votes
WHERE user_id = %(user_id)s AND project_id = ANY(%(project_ids)s) AND vote_type = 'up';

-- ------------------------------------------------------------------ GET /api/projects/<id>

-- name: project_before --
SELECT p.id,
       p.title,
       p.tagline,
       p.description,
       p.tags,
       p.created_at,
       p.updated_at,
       p.owner_id,
       u.username AS owner_username,
       u.display_name AS owner_display_name,
       p.chain_id,
       c.slug AS chain_slug,
       c.name AS chain_name,
       vs.upvotes,
       vs.downvotes,
       vs.upvotes - vs.downvotes AS score,
       (SELECT count(*) FROM comments cm WHERE cm.project_id = p.id) AS comments_count,
       (SELECT coalesce(
                   jsonb_agg(
                       jsonb_build_object(
                           'id', rc.id,
                           'user_id', rc.user_id,
                           'username', cu.username,
                           'body', rc.body,
                           'created_at',
                           to_char(rc.created_at AT TIME ZONE 'UTC',
                                   'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
                       ORDER BY rc.created_at DESC, rc.id DESC),
                   '[]'::jsonb)
        FROM (SELECT id, user_id, body, created_at
              FROM comments
              WHERE project_id = p.id
              ORDER BY created_at DESC, id DESC
              LIMIT 5) rc
        JOIN users cu ON cu.id = rc.user_id) AS recent_comments
FROM projects p
JOIN users u ON u.id = p.owner_id
LEFT JOIN chains c ON c.id = p.chain_id
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE vote_type = 'up') AS upvotes,
           count(*) FILTER (WHERE vote_type = 'down') AS downvotes
    FROM votes
    WHERE project_id = p.id
) vs
WHERE p.id = %(project_id)s AND p.deleted_at IS NULL;

-- name: project_after --
SELECT project_id AS id,
       title,
       tagline,
       description,
       tags,
       created_at,
       updated_at,
       owner_id,
       owner_username,
       owner_display_name,
       chain_id,
       chain_slug,
       chain_name,
       upvotes,
       downvotes,
       score,
       comments_count,
       recent_comments
FROM mv_project_details
WHERE project_id = %(project_id)s;

-- ------------------------------------------------------------------ GET /api/leaderboard/projects

-- Rank: score desc, then project id asc (mv_leaderboard_projects' row_number).
-- name: leaderboard_projects_before --
SELECT row_number() OVER (ORDER BY s.score DESC, s.id) AS rank, s.*
FROM (
    SELECT p.id,
           p.title,
           p.owner_id,
           u.username AS owner_username,
           coalesce(vs.upvotes, 0) AS upvotes,
           coalesce(vs.downvotes, 0) AS downvotes,
           coalesce(vs.upvotes, 0) - coalesce(vs.downvotes, 0) AS score,
           (SELECT count(*) FROM comments cm WHERE cm.project_id = p.id) AS comments_count
    FROM projects p
    JOIN users u ON u.id = p.owner_id
    LEFT JOIN (
        SELECT project_id,
               count(*) FILTER (WHERE vote_type = 'up') AS upvotes,
               count(*) FILTER (WHERE vote_type = 'down') AS downvotes
        FROM votes
        GROUP BY project_id
    ) vs ON vs.project_id = p.id
    WHERE p.deleted_at IS NULL
) s
ORDER BY rank
LIMIT %(limit)s OFFSET %(offset)s;

-- name: leaderboard_projects_after --
-- The page is read from the order index ((-score), project_id), whose positions are the ranks
-- (no rank is stored: one vote would move hundreds of them): rank = offset + place on the page.
SELECT %(offset)s::bigint + row_number() OVER (ORDER BY (-score), project_id) AS rank,
       project_id AS id, title, owner_id, owner_username, upvotes, downvotes, score,
       comments_count
FROM (
    SELECT * FROM mv_leaderboard_projects
    ORDER BY (-score), project_id
    LIMIT %(limit)s OFFSET %(offset)s
) page
ORDER BY rank;

-- ------------------------------------------------------------------ GET /api/leaderboard/builders

-- Builders are users with at least one live project; rank: score desc, then user id asc.
-- name: leaderboard_builders_before --
SELECT row_number() OVER (ORDER BY s.score DESC, s.id) AS rank, s.*
FROM (
    SELECT u.id,
           u.username,
           u.display_name,
           count(*) AS projects_count,
           coalesce(sum(vs.upvotes), 0)::bigint AS upvotes_received,
           coalesce(sum(vs.downvotes), 0)::bigint AS downvotes_received,
           (coalesce(sum(vs.upvotes), 0) - coalesce(sum(vs.downvotes), 0))::bigint AS score,
           (SELECT count(*) FROM follows f WHERE f.followee_id = u.id) AS followers_count
    FROM users u
    JOIN projects p ON p.owner_id = u.id AND p.deleted_at IS NULL
    LEFT JOIN (
        SELECT project_id,
               count(*) FILTER (WHERE vote_type = 'up') AS upvotes,
               count(*) FILTER (WHERE vote_type = 'down') AS downvotes
        FROM votes
        GROUP BY project_id
    ) vs ON vs.project_id = p.id
    GROUP BY u.id
) s
ORDER BY rank
LIMIT %(limit)s OFFSET %(offset)s;

-- name: leaderboard_builders_after --
-- rank = offset + place on the page, as for the projects' leaderboard.
SELECT %(offset)s::bigint + row_number() OVER (ORDER BY (-score), user_id) AS rank,
       user_id AS id, username, display_name, projects_count, upvotes_received,
       downvotes_received, score, followers_count
FROM (
    SELECT * FROM mv_leaderboard_builders
    ORDER BY (-score), user_id
    LIMIT %(limit)s OFFSET %(offset)s
) page
ORDER BY rank;

-- ------------------------------------------------------------------ GET /api/chains

-- name: chains_before --
SELECT c.id,
       c.slug,
       c.name,
       c.description,
       c.created_at,
       (SELECT count(*) FROM chain_members m WHERE m.chain_id = c.id) AS members_count,
       coalesce(p.projects_count, 0) AS projects_count,
       coalesce(po.posts_count, 0) AS posts_count,
       greatest(c.created_at, po.last_post_at,
                (SELECT max(r.created_at)
                 FROM chain_post_replies r JOIN chain_posts cp ON cp.id = r.post_id
                 WHERE cp.chain_id = c.id),
                p.last_project_at) AS last_activity_at
FROM chains c
LEFT JOIN (
    SELECT chain_id, count(*) AS projects_count, max(created_at) AS last_project_at
    FROM projects
    WHERE deleted_at IS NULL
    GROUP BY chain_id
) p ON p.chain_id = c.id
LEFT JOIN (
    SELECT chain_id, count(*) AS posts_count, max(created_at) AS last_post_at
    FROM chain_posts
    GROUP BY chain_id
) po ON po.chain_id = c.id
ORDER BY {order_by}
LIMIT %(limit)s OFFSET %(offset)s;

-- name: chains_after --
SELECT chain_id AS id, slug, name, description, created_at, members_count, projects_count,
       posts_count, last_activity_at
FROM mv_chains_discovery
ORDER BY {order_by}
LIMIT %(limit)s OFFSET %(offset)s;

-- ------------------------------------------------------------------ GET /api/chains/<slug>/posts

-- Newest activity first (the latest reply, else the post itself), ties by post id desc.
-- name: chain_posts_before --
SELECT cp.id,
       cp.chain_id,
       c.slug AS chain_slug,
       cp.author_id,
       u.username AS author_username,
       cp.title,
       left(cp.body, 200) AS body_preview,
       cp.created_at,
       coalesce(r.replies_count, 0) AS replies_count,
       r.last_reply_at,
       coalesce(r.last_reply_at, cp.created_at) AS last_activity_at
FROM chains c
JOIN chain_posts cp ON cp.chain_id = c.id
JOIN users u ON u.id = cp.author_id
LEFT JOIN LATERAL (
    SELECT count(*) AS replies_count, max(created_at) AS last_reply_at
    FROM chain_post_replies
    WHERE post_id = cp.id
) r ON true
WHERE c.slug = %(slug)s
ORDER BY last_activity_at DESC, cp.id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- name: chain_posts_after --
SELECT post_id AS id, chain_id, chain_slug, author_id, author_username, title, body_preview,
       created_at, replies_count, last_reply_at, last_activity_at
FROM mv_chain_posts
WHERE chain_slug = %(slug)s
ORDER BY last_activity_at DESC, post_id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- Asked only when a page of posts is empty: 404 for an unknown chain, an empty list otherwise.
-- name: chain_exists_before --
SELECT EXISTS (SELECT FROM chains WHERE slug = %(slug)s) AS chain_exists;

-- name: chain_exists_after --
SELECT EXISTS (SELECT FROM mv_chains_discovery WHERE slug = %(slug)s) AS chain_exists;

-- ------------------------------------------------------------------ GET /api/search

-- Search by words (docs/search.md): the query's words are the distinct maximal runs of
-- letters and digits of lower(q), a document's words those of its lower-cased text and its
-- name words those of its title (phase 3's mv_search_index.words, name_words). A query word
-- matches a document word when they are equal, or when neither has a digit (0-9) and their
-- pg_trgm similarity reaches the threshold; a query word's best match in a document is its
-- most similar word there, a name word first among equals. A document matches when every query
-- word matches one of its words; its similarity is the mean of the best matches'
-- similarities. Ranked by similarity desc, the number of best matches that are name words
-- desc, popularity desc, kind, id. Before mode computes that from the base tables; after mode
-- from the word index (search_words, search_postings) in two steps.
-- name: search_before --
WITH documents AS (
    SELECT 'project'::text AS kind, p.id, p.title, p.tagline AS subtitle,
           lower(concat_ws(' ', p.title, p.tagline, array_to_string(p.tags, ' '))) AS document
    FROM projects p
    WHERE p.deleted_at IS NULL
    UNION ALL
    SELECT 'builder', u.id, u.display_name, u.username,
           lower(concat_ws(' ', u.username, u.display_name, u.bio))
    FROM users u
    UNION ALL
    SELECT 'chain', c.id, c.name, c.slug, lower(concat_ws(' ', c.name, c.slug, c.description))
    FROM chains c
), query_words AS (
    SELECT DISTINCT word AS query_word
    FROM regexp_split_to_table(lower(%(q)s), '[^[:alnum:]]+') AS word
    WHERE word <> ''
), tokens AS MATERIALIZED (
    -- every word of every document, and again each word of its name (in_name)
    SELECT d.kind, d.id, word, false AS in_name
    FROM documents d,
         unnest(string_to_array(regexp_replace(d.document, '[^[:alnum:]]+', ' ', 'g'), ' ')) AS word
    UNION ALL
    SELECT d.kind, d.id, word, true
    FROM documents d,
         unnest(string_to_array(regexp_replace(lower(d.title), '[^[:alnum:]]+', ' ', 'g'), ' ')) AS word
), matched AS (
    -- each distinct word once: similarity() runs per vocabulary word, not per occurrence
    SELECT q.query_word, v.word, similarity(q.query_word, v.word) AS similarity
    FROM query_words q
    CROSS JOIN (SELECT DISTINCT word FROM tokens WHERE word <> '') v
    WHERE v.word = q.query_word
       OR (q.query_word !~ '[0-9]' AND v.word !~ '[0-9]'
           AND similarity(q.query_word, v.word) >= %(threshold)s)
), best AS (
    -- the documents' occurrences of matched words only, then each query word's best match
    SELECT DISTINCT ON (t.kind, t.id, m.query_word)
           t.kind, t.id, m.query_word, m.similarity, t.in_name
    FROM tokens t
    JOIN matched m ON m.word = t.word
    ORDER BY t.kind, t.id, m.query_word, m.similarity DESC, t.in_name DESC
), scored AS (
    SELECT kind, id, avg(similarity) AS similarity, count(*) FILTER (WHERE in_name) AS in_name
    FROM best
    GROUP BY kind, id
    HAVING count(*) = (SELECT count(*) FROM query_words)
), ranked AS (
    SELECT s.kind,
           s.id,
           d.title,
           d.subtitle,
           s.similarity,
           s.in_name,
           CASE s.kind
               WHEN 'project' THEN (SELECT count(*) FILTER (WHERE v.vote_type = 'up')
                                           - count(*) FILTER (WHERE v.vote_type = 'down')
                                    FROM votes v WHERE v.project_id = s.id)
               WHEN 'builder' THEN (SELECT count(*) FROM follows f WHERE f.followee_id = s.id)
               ELSE (SELECT count(*) FROM chain_members cm WHERE cm.chain_id = s.id)
           END AS popularity
    FROM scored s
    JOIN documents d ON d.kind = s.kind AND d.id = s.id
)
SELECT kind, id, title, subtitle, similarity, popularity
FROM ranked
ORDER BY similarity DESC, in_name DESC, popularity DESC, kind, id
LIMIT %(limit)s OFFSET %(offset)s;

-- After mode, step 1: the query's words and, for each, the dictionary words it matches (the
-- primary key finds an equal word, the trigram index of the words without a digit serves `%%`,
-- pinned to the same threshold on every connection), best first. A query word without a match
-- comes back once with NULL word: no document matches.
-- name: search_matches_after --
WITH query_words AS (
    SELECT DISTINCT word AS query_word
    FROM regexp_split_to_table(lower(%(q)s), '[^[:alnum:]]+') AS word
    WHERE word <> ''
)
SELECT q.query_word, m.word, m.similarity, m.documents
FROM query_words q
LEFT JOIN LATERAL (
    SELECT d.word, 1::real AS similarity, d.documents
    FROM search_words d
    WHERE d.word = q.query_word
    UNION
    SELECT d.word, similarity(q.query_word, d.word), d.documents
    FROM search_words d
    WHERE q.query_word !~ '[0-9]' AND d.word !~ '[0-9]' AND d.word %% q.query_word
      AND similarity(q.query_word, d.word) >= %(threshold)s
) m ON true
ORDER BY q.query_word, m.similarity DESC, m.word;

-- After mode, step 2 for a one-word query: each kept word's `wanted` first documents in
-- rank order (name word first, then popularity desc, kind, id: one range scan of the postings
-- index each). That holds the exact page: a document on it ranks among the first `wanted`
-- documents of its best word, since every document ranked before it there ranks before it
-- overall.
-- name: search_one_word_after --
WITH kept AS (
    SELECT word, similarity(%(query_word)s, word) AS similarity
    FROM unnest(%(words)s::text[]) AS word
), hits AS (
    SELECT DISTINCT ON (p.kind, p.entity_id)
           p.kind, p.entity_id, p.popularity, k.similarity, p.in_name
    FROM kept k
    CROSS JOIN LATERAL (
        SELECT kind, entity_id, in_name, popularity
        FROM search_postings
        WHERE word = k.word
        ORDER BY in_name DESC, popularity DESC, kind, entity_id
        LIMIT %(wanted)s
    ) p
    ORDER BY p.kind, p.entity_id, k.similarity DESC, p.in_name DESC
), page AS (
    SELECT kind, entity_id, popularity, similarity, in_name
    FROM hits
    ORDER BY similarity DESC, in_name DESC, popularity DESC, kind, entity_id
    LIMIT %(limit)s OFFSET %(offset)s
)
SELECT page.kind, page.entity_id AS id, s.title, s.subtitle,
       page.similarity::float8 AS similarity, page.popularity
FROM page
JOIN mv_search_index s ON s.kind = page.kind AND s.entity_id = page.entity_id
ORDER BY page.similarity DESC, page.in_name DESC, page.popularity DESC, page.kind,
         page.entity_id;

-- After mode, step 2 for several query words: (query_words[i], words[i]) are the matches of
-- step 1. Each query word's best match in each document comes from the postings of its
-- matches (index-only scans); a document that has one for every query word matches. Costs
-- the matched words' postings: a query of common words reads many.
-- name: search_all_words_after --
WITH matched AS (
    SELECT query_word, word, similarity(query_word, word) AS similarity
    FROM unnest(%(query_words)s::text[], %(words)s::text[]) AS m(query_word, word)
), best AS (
    SELECT DISTINCT ON (m.query_word, p.kind, p.entity_id)
           m.query_word, p.kind, p.entity_id, p.popularity, m.similarity, p.in_name
    FROM matched m
    CROSS JOIN LATERAL (
        -- OFFSET 0 keeps this a scan of one word's postings per match: unflattened, the
        -- planner misjudges the join and reads every posting (0.8 s at medium)
        SELECT kind, entity_id, popularity, in_name
        FROM search_postings
        WHERE word = m.word
        OFFSET 0
    ) p
    ORDER BY m.query_word, p.kind, p.entity_id, m.similarity DESC, p.in_name DESC
), page AS (
    SELECT kind, entity_id, popularity, avg(similarity) AS similarity,
           count(*) FILTER (WHERE in_name) AS in_name
    FROM best
    GROUP BY kind, entity_id, popularity
    HAVING count(*) = %(query_word_count)s
    ORDER BY similarity DESC, in_name DESC, popularity DESC, kind, entity_id
    LIMIT %(limit)s OFFSET %(offset)s
)
SELECT page.kind, page.entity_id AS id, s.title, s.subtitle, page.similarity, page.popularity
FROM page
JOIN mv_search_index s ON s.kind = page.kind AND s.entity_id = page.entity_id
ORDER BY page.similarity DESC, page.in_name DESC, page.popularity DESC, page.kind,
         page.entity_id;

-- name: pg_trgm_installed --
SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_trgm') AS installed;

-- ------------------------------------------------------------------ GET /api/investors

-- Most followed first, ties by user id; acceptance_rate = accepted / answered (NULL if none).
-- name: investors_before --
SELECT u.id,
       u.username,
       u.display_name,
       ip.firm,
       ip.check_size_min,
       ip.check_size_max,
       ip.focus,
       coalesce(i.intros_received, 0) AS intros_received,
       coalesce(i.intros_accepted, 0) AS intros_accepted,
       (i.intros_accepted::numeric / nullif(i.intros_answered, 0))::float8 AS acceptance_rate,
       (SELECT count(*) FROM follows f WHERE f.followee_id = u.id) AS followers_count
FROM users u
LEFT JOIN investor_profiles ip ON ip.user_id = u.id
LEFT JOIN (
    SELECT target_id,
           count(*) AS intros_received,
           count(*) FILTER (WHERE status = 'accepted') AS intros_accepted,
           count(*) FILTER (WHERE status IN ('accepted', 'declined')) AS intros_answered
    FROM intro_requests
    GROUP BY target_id
) i ON i.target_id = u.id
WHERE u.role = 'investor'
ORDER BY followers_count DESC, u.id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: investors_after --
SELECT user_id AS id, username, display_name, firm, check_size_min, check_size_max, focus,
       intros_received, intros_accepted, acceptance_rate::float8 AS acceptance_rate,
       followers_count
FROM mv_investors_directory
ORDER BY followers_count DESC, user_id
LIMIT %(limit)s OFFSET %(offset)s;

-- ------------------------------------------------------------------ GET /api/messages/conversations

-- Most recent conversation first (its newest message: created_at, then id).
-- name: conversations_before --
WITH mine AS (
    SELECT CASE WHEN m.sender_id = %(user_id)s THEN m.recipient_id ELSE m.sender_id END
               AS other_user_id,
           m.id, m.created_at, m.sender_id, m.body,
           (m.recipient_id = %(user_id)s AND m.read_at IS NULL) AS unread
    FROM messages m
    WHERE m.sender_id = %(user_id)s OR m.recipient_id = %(user_id)s
), conversations AS (
    SELECT DISTINCT ON (other_user_id)
           other_user_id,
           count(*) OVER (PARTITION BY other_user_id) AS message_count,
           count(*) FILTER (WHERE unread) OVER (PARTITION BY other_user_id) AS unread_count,
           id AS last_message_id,
           created_at AS last_message_at,
           sender_id AS last_message_sender_id,
           left(body, 100) AS last_message_preview
    FROM mine
    ORDER BY other_user_id, created_at DESC, id DESC
)
SELECT c.other_user_id, u.username AS other_username, u.display_name AS other_display_name,
       c.message_count, c.unread_count, c.last_message_id, c.last_message_at,
       c.last_message_sender_id, c.last_message_preview
FROM conversations c
JOIN users u ON u.id = c.other_user_id
ORDER BY c.last_message_at DESC, c.last_message_id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- name: conversations_after --
SELECT c.other_user_id, u.username AS other_username, u.display_name AS other_display_name,
       c.message_count, c.unread_count, c.last_message_id, c.last_message_at,
       c.last_message_sender_id, c.last_message_preview
FROM message_conversations_denorm c
JOIN users u ON u.id = c.other_user_id
WHERE c.user_id = %(user_id)s
ORDER BY c.last_message_at DESC, c.last_message_id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- ------------------------------------------------------------------ GET /api/intros/stats

-- name: intro_stats_before --
SELECT u.id AS user_id,
       count(i.id) FILTER (WHERE i.requester_id = u.id) AS sent_total,
       count(i.id) FILTER (WHERE i.requester_id = u.id AND i.status = 'pending') AS sent_pending,
       count(i.id) FILTER (WHERE i.requester_id = u.id AND i.status = 'accepted')
           AS sent_accepted,
       count(i.id) FILTER (WHERE i.requester_id = u.id AND i.status = 'declined')
           AS sent_declined,
       count(i.id) FILTER (WHERE i.target_id = u.id) AS received_total,
       count(i.id) FILTER (WHERE i.target_id = u.id AND i.status = 'pending')
           AS received_pending,
       count(i.id) FILTER (WHERE i.target_id = u.id AND i.status = 'accepted')
           AS received_accepted,
       count(i.id) FILTER (WHERE i.target_id = u.id AND i.status = 'declined')
           AS received_declined
FROM users u
LEFT JOIN intro_requests i ON i.requester_id = u.id OR i.target_id = u.id
WHERE u.id = %(user_id)s
GROUP BY u.id;

-- name: intro_stats_after --
SELECT user_id, sent_total, sent_pending, sent_accepted, sent_declined, received_total,
       received_pending, received_accepted, received_declined
FROM intro_request_stats
WHERE user_id = %(user_id)s;

-- ------------------------------------------------------------------ writes (both modes)

-- Whether the voter exists (else 401) and the project is live (else 404), in one round trip.
-- name: vote_check --
SELECT EXISTS (SELECT FROM users WHERE id = %(user_id)s) AS user_exists,
       EXISTS (
           SELECT FROM projects WHERE id = %(project_id)s AND deleted_at IS NULL
       ) AS live;

-- A vote that does not change keeps its row untouched (no trigger work, no refresh request).
-- name: vote_upsert --
INSERT INTO votes (user_id, project_id, vote_type)
VALUES (%(user_id)s, %(project_id)s, %(vote_type)s)
ON CONFLICT (user_id, project_id) DO UPDATE
SET vote_type = EXCLUDED.vote_type
WHERE votes.vote_type IS DISTINCT FROM EXCLUDED.vote_type;

-- name: vote_delete --
DELETE FROM votes WHERE user_id = %(user_id)s AND project_id = %(project_id)s;

-- name: project_vote_counts_before --
SELECT count(*) FILTER (WHERE vote_type = 'up') AS upvotes,
       count(*) FILTER (WHERE vote_type = 'down') AS downvotes
FROM votes
WHERE project_id = %(project_id)s;

-- The same counts from phase1's project_stats (folded base + pending deltas, this transaction's
-- vote included): a popular project's 30,000 votes are not counted again for each vote.
-- name: project_vote_counts_after --
SELECT upvotes, downvotes FROM project_stats WHERE project_id = %(project_id)s;

-- name: message_insert --
INSERT INTO messages (sender_id, recipient_id, body)
VALUES (%(sender_id)s, %(recipient_id)s, %(body)s)
RETURNING id, sender_id, recipient_id, body, created_at, read_at;

-- name: messages_mark_read --
UPDATE messages
SET read_at = now()
WHERE recipient_id = %(user_id)s AND sender_id = %(other_user_id)s AND read_at IS NULL;

-- name: intro_insert --
INSERT INTO intro_requests (requester_id, target_id, project_id, message)
VALUES (%(requester_id)s, %(target_id)s, %(project_id)s, %(message)s)
RETURNING id, requester_id, target_id, project_id, status, message, created_at, responded_at;

-- name: intro_respond --
UPDATE intro_requests
SET status = %(status)s, responded_at = now()
WHERE id = %(intro_id)s AND target_id = %(user_id)s AND status = 'pending'
RETURNING id, requester_id, target_id, project_id, status, message, created_at, responded_at;

-- Why an answer changed nothing: no such intro, someone else's, or already answered.
-- name: intro_target_and_status --
SELECT target_id, status FROM intro_requests WHERE id = %(intro_id)s;
