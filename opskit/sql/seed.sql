-- Deterministic synthetic data for the app tables, generated inside PostgreSQL.
--
-- Every random choice is pg_temp.seed_u(seed, stream, key): a hash of (seed, stream, key), so the
-- same --seed gives the same rows whatever the plan or the batch boundaries. Popularity comes
-- from Python as per-rank child counts (Zipf-like weights); pg_temp.seed_perm maps a rank to an
-- id (a bijection, so popular parents are spread over the id range). Rows get explicit ids
-- (first_id + j), so the identity sequences are set once at the end.
-- Blocks are loaded by opskit.sql.queries(); %(name)s are query parameters.

-- name: create_helpers --
CREATE FUNCTION pg_temp.seed_u(seed bigint, stream int, key bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (hashint8extended(key, seed * 1000 + stream) & 9007199254740991)::float8
             / 9007199254740992.0 $$;

-- A Zipf-like rank in 1..n for u in [0, 1): P(rank <= k) = ln(k + 1) / ln(n + 1).
CREATE FUNCTION pg_temp.seed_pick(u float8, n bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT least(n, greatest(1, floor(exp(u * ln(n + 1.0)))::bigint)) $$;

-- Rank 1..n to id 1..n, a bijection because 1000003 is prime and larger than any n we use.
CREATE FUNCTION pg_temp.seed_perm(rank bigint, n bigint, salt bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT mod((rank - 1) * 1000003 + salt, n) + 1 $$;

CREATE FUNCTION pg_temp.seed_between(lo timestamptz, hi timestamptz, u float8) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT lo + (hi - lo) * u $$;

-- Users join at an even pace over the two years, in id order.
CREATE FUNCTION pg_temp.seed_user_created(id bigint, n_users bigint, t0 timestamptz, t1 timestamptz)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT t0 + (t1 - t0) * ((id - 1)::float8 / n_users) $$;

CREATE TEMP TABLE seed_words (id int PRIMARY KEY, word text NOT NULL) ON COMMIT DROP;
CREATE TEMP TABLE seed_sentences (id int PRIMARY KEY, sentence text NOT NULL) ON COMMIT DROP;

-- name: fill_words --
INSERT INTO seed_words (id, word)
SELECT ord, word FROM unnest(%(words)s::text[]) WITH ORDINALITY AS t(word, ord);

-- name: fill_sentences --
-- 4096 sentences of 3 to 42 words (about 15 to 300 characters); text columns pick one by hash.
INSERT INTO seed_sentences (id, sentence)
SELECT s.id, upper(left(body, 1)) || substr(body, 2) || '.'
FROM generate_series(0, 4095) AS s(id)
CROSS JOIN LATERAL (
    SELECT string_agg(w.word, ' ' ORDER BY k) AS body
    FROM generate_series(1, 3 + mod(s.id * 7919, 40)) AS k
    JOIN seed_words w
      ON w.id = 1 + floor(pg_temp.seed_u(%(seed)s, 1, s.id * 64 + k) * %(n_words)s)::int
) AS text;

-- name: insert_users --
INSERT INTO users (id, username, display_name, email, role, bio, created_at)
SELECT u.id,
       u.first_name || '_' || u.last_name || u.id,
       initcap(u.first_name) || ' ' || initcap(u.last_name),
       u.first_name || '.' || u.last_name || u.id || '@example.' || (ARRAY['com', 'io', 'dev'])[1 + mod(u.id, 3)],
       CASE WHEN u.role_u < 0.03 THEN 'investor' WHEN u.role_u < 0.035 THEN 'admin' ELSE 'builder' END,
       CASE WHEN pg_temp.seed_u(%(seed)s, 12, u.id) < 0.7 THEN bio.sentence END,
       pg_temp.seed_user_created(u.id, %(n_users)s, %(t0)s, %(t1)s)
FROM (
    SELECT id,
           (%(first_names)s::text[])[1 + floor(pg_temp.seed_u(%(seed)s, 10, id) * %(n_first)s)::int] AS first_name,
           (%(last_names)s::text[])[1 + floor(pg_temp.seed_u(%(seed)s, 11, id) * %(n_last)s)::int] AS last_name,
           pg_temp.seed_u(%(seed)s, 13, id) AS role_u
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g(id)
) AS u
JOIN seed_sentences bio ON bio.id = (hashint8extended(u.id, %(seed)s::bigint * 1000 + 14) & 4095);

-- name: insert_chains --
INSERT INTO chains (id, slug, name, description, created_at)
SELECT g.id,
       w.word || '-' || g.id,
       initcap(w.word) || ' Chain ' || g.id,
       d.sentence,
       pg_temp.seed_between(%(t0)s, %(t1)s, 0.5 * pg_temp.seed_u(%(seed)s, 20, g.id))
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g(id)
JOIN seed_words w ON w.id = 1 + mod(g.id, %(n_words)s)
JOIN seed_sentences d ON d.id = (hashint8extended(g.id, %(seed)s::bigint * 1000 + 21) & 4095);

-- name: insert_chain_members --
-- Members of one chain are distinct: user = (offset + j * stride) mod n_users, stride coprime.
INSERT INTO chain_members (chain_id, user_id, joined_at)
SELECT m.chain_id, m.user_id,
       pg_temp.seed_between(greatest(ch.created_at, pg_temp.seed_user_created(m.user_id, %(n_users)s, %(t0)s, %(t1)s)),
                            %(t1)s, pg_temp.seed_u(%(seed)s, 30, m.key))
FROM (
    SELECT pg_temp.seed_perm(c.rank + %(rank_base)s, %(n_parents)s, %(salt)s) AS chain_id,
           mod((c.rank + %(rank_base)s) * 7919 + j::bigint * %(stride)s, %(n_users)s) + 1 AS user_id,
           c.first_id + j AS key
    FROM unnest(%(counts)s::int[], %(first_ids)s::bigint[]) WITH ORDINALITY AS c(n, first_id, rank)
    CROSS JOIN LATERAL generate_series(0, c.n - 1) AS j
) AS m
JOIN chains ch ON ch.id = m.chain_id;

-- name: insert_projects --
INSERT INTO projects (id, owner_id, chain_id, title, tagline, description, tags,
                      created_at, updated_at, deleted_at)
SELECT p.id, p.owner_id, p.chain_id,
       initcap(a.word) || ' ' || initcap(b.word),
       tagline.sentence,
       description.sentence || ' ' || more.sentence,
       p.tags,
       p.created_at,
       p.updated_at,
       CASE WHEN pg_temp.seed_u(%(seed)s, 46, p.id) < 0.05 THEN p.updated_at END
FROM (
    SELECT q.*,
           pg_temp.seed_between(q.created_at, %(t1)s, pg_temp.seed_u(%(seed)s, 45, q.id)) AS updated_at
    FROM (
        SELECT id, owner_id,
               CASE WHEN pg_temp.seed_u(%(seed)s, 41, id) < 0.8 THEN
                   pg_temp.seed_perm(pg_temp.seed_pick(pg_temp.seed_u(%(seed)s, 42, id), %(n_chains)s),
                                     %(n_chains)s, %(chain_salt)s)
               END AS chain_id,
               ARRAY(SELECT (%(tags)s::text[])[1 + floor(pg_temp.seed_u(%(seed)s, 43, id * 8 + k) * %(n_tags)s)::int]
                     FROM generate_series(1, 1 + mod(id * 31, 4)) AS k) AS tags,
               pg_temp.seed_between(pg_temp.seed_user_created(owner_id, %(n_users)s, %(t0)s, %(t1)s),
                                    %(t1)s, pg_temp.seed_u(%(seed)s, 44, id)) AS created_at
        FROM (
            SELECT id, pg_temp.seed_perm(pg_temp.seed_pick(pg_temp.seed_u(%(seed)s, 40, id), %(n_users)s),
                                         %(n_users)s, %(owner_salt)s) AS owner_id
            FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g(id)
        ) AS o
    ) AS q
) AS p
JOIN seed_words a ON a.id = 1 + floor(pg_temp.seed_u(%(seed)s, 47, p.id) * %(n_words)s)::int
JOIN seed_words b ON b.id = 1 + floor(pg_temp.seed_u(%(seed)s, 48, p.id) * %(n_words)s)::int
JOIN seed_sentences tagline ON tagline.id = (hashint8extended(p.id, %(seed)s::bigint * 1000 + 49) & 511)
JOIN seed_sentences description ON description.id = (hashint8extended(p.id, %(seed)s::bigint * 1000 + 50) & 4095)
JOIN seed_sentences more ON more.id = (hashint8extended(p.id, %(seed)s::bigint * 1000 + 51) & 4095);

-- name: insert_votes --
-- Voters of one project are distinct (same stride walk as chain members); 85%% up.
INSERT INTO votes (user_id, project_id, vote_type, created_at)
SELECT v.user_id, v.project_id,
       CASE WHEN pg_temp.seed_u(%(seed)s, 60, v.key) < 0.85 THEN 'up' ELSE 'down' END,
       pg_temp.seed_between(greatest(p.created_at, pg_temp.seed_user_created(v.user_id, %(n_users)s, %(t0)s, %(t1)s)),
                            %(t1)s, pg_temp.seed_u(%(seed)s, 61, v.key))
FROM (
    SELECT pg_temp.seed_perm(c.rank + %(rank_base)s, %(n_parents)s, %(salt)s) AS project_id,
           mod((c.rank + %(rank_base)s) * 7919 + j::bigint * %(stride)s, %(n_users)s) + 1 AS user_id,
           c.first_id + j AS key
    FROM unnest(%(counts)s::int[], %(first_ids)s::bigint[]) WITH ORDINALITY AS c(n, first_id, rank)
    CROSS JOIN LATERAL generate_series(0, c.n - 1) AS j
) AS v
JOIN projects p ON p.id = v.project_id;

-- name: insert_comments --
INSERT INTO comments (id, project_id, user_id, body, created_at)
SELECT v.id, v.project_id, v.user_id, body.sentence,
       pg_temp.seed_between(greatest(p.created_at, pg_temp.seed_user_created(v.user_id, %(n_users)s, %(t0)s, %(t1)s)),
                            %(t1)s, pg_temp.seed_u(%(seed)s, 71, v.id))
FROM (
    SELECT pg_temp.seed_perm(c.rank + %(rank_base)s, %(n_parents)s, %(salt)s) AS project_id,
           pg_temp.seed_perm(pg_temp.seed_pick(pg_temp.seed_u(%(seed)s, 70, c.first_id + j), %(n_users)s),
                             %(n_users)s, %(user_salt)s) AS user_id,
           c.first_id + j AS id
    FROM unnest(%(counts)s::int[], %(first_ids)s::bigint[]) WITH ORDINALITY AS c(n, first_id, rank)
    CROSS JOIN LATERAL generate_series(0, c.n - 1) AS j
) AS v
JOIN projects p ON p.id = v.project_id
JOIN seed_sentences body ON body.id = (hashint8extended(v.id, %(seed)s::bigint * 1000 + 72) & 4095);

-- name: insert_follows --
-- Followers of one user are distinct and never the user: offset 1..n_users-1 from the followee.
INSERT INTO follows (follower_id, followee_id, created_at)
SELECT f.follower_id, f.followee_id,
       pg_temp.seed_between(greatest(pg_temp.seed_user_created(f.follower_id, %(n_users)s, %(t0)s, %(t1)s),
                                     pg_temp.seed_user_created(f.followee_id, %(n_users)s, %(t0)s, %(t1)s)),
                            %(t1)s, pg_temp.seed_u(%(seed)s, 80, f.key))
FROM (
    SELECT followee_id,
           mod(followee_id - 1 + 1 + mod((c.rank + %(rank_base)s) * 7919 + j::bigint * %(stride)s, %(n_users)s - 1),
               %(n_users)s) + 1 AS follower_id,
           key
    FROM (
        SELECT pg_temp.seed_perm(c.rank + %(rank_base)s, %(n_parents)s, %(salt)s) AS followee_id,
               c.rank, j, c.first_id + j AS key
        FROM unnest(%(counts)s::int[], %(first_ids)s::bigint[]) WITH ORDINALITY AS c(n, first_id, rank)
        CROSS JOIN LATERAL generate_series(0, c.n - 1) AS j
    ) AS c
) AS f;

-- name: insert_chain_posts --
INSERT INTO chain_posts (id, chain_id, author_id, title, body, created_at)
SELECT v.id, v.chain_id, v.author_id,
       left(title.sentence, 80), body.sentence,
       pg_temp.seed_between(greatest(ch.created_at, pg_temp.seed_user_created(v.author_id, %(n_users)s, %(t0)s, %(t1)s)),
                            %(t1)s, pg_temp.seed_u(%(seed)s, 91, v.id))
FROM (
    SELECT pg_temp.seed_perm(c.rank + %(rank_base)s, %(n_parents)s, %(salt)s) AS chain_id,
           pg_temp.seed_perm(pg_temp.seed_pick(pg_temp.seed_u(%(seed)s, 90, c.first_id + j), %(n_users)s),
                             %(n_users)s, %(user_salt)s) AS author_id,
           c.first_id + j AS id
    FROM unnest(%(counts)s::int[], %(first_ids)s::bigint[]) WITH ORDINALITY AS c(n, first_id, rank)
    CROSS JOIN LATERAL generate_series(0, c.n - 1) AS j
) AS v
JOIN chains ch ON ch.id = v.chain_id
JOIN seed_sentences title ON title.id = (hashint8extended(v.id, %(seed)s::bigint * 1000 + 92) & 511)
JOIN seed_sentences body ON body.id = (hashint8extended(v.id, %(seed)s::bigint * 1000 + 93) & 4095);

-- name: insert_chain_post_replies --
INSERT INTO chain_post_replies (id, post_id, author_id, body, created_at)
SELECT v.id, v.post_id, v.author_id, body.sentence,
       pg_temp.seed_between(greatest(post.created_at, pg_temp.seed_user_created(v.author_id, %(n_users)s, %(t0)s, %(t1)s)),
                            %(t1)s, pg_temp.seed_u(%(seed)s, 101, v.id))
FROM (
    SELECT pg_temp.seed_perm(c.rank + %(rank_base)s, %(n_parents)s, %(salt)s) AS post_id,
           pg_temp.seed_perm(pg_temp.seed_pick(pg_temp.seed_u(%(seed)s, 100, c.first_id + j), %(n_users)s),
                             %(n_users)s, %(user_salt)s) AS author_id,
           c.first_id + j AS id
    FROM unnest(%(counts)s::int[], %(first_ids)s::bigint[]) WITH ORDINALITY AS c(n, first_id, rank)
    CROSS JOIN LATERAL generate_series(0, c.n - 1) AS j
) AS v
JOIN chain_posts post ON post.id = v.post_id
JOIN seed_sentences body ON body.id = (hashint8extended(v.id, %(seed)s::bigint * 1000 + 102) & 4095);

-- name: insert_messages --
-- Conversations are the parents: conversation k is between a (a popular user) and b (anyone else);
-- its messages alternate senders at random and spread from the conversation's start to the end
-- of the data; about 30%% are unread, read ones were read within two days.
INSERT INTO messages (id, sender_id, recipient_id, body, created_at, read_at)
SELECT m.id,
       CASE WHEN m.a_sends THEN m.a ELSE m.b END,
       CASE WHEN m.a_sends THEN m.b ELSE m.a END,
       body.sentence,
       m.created_at,
       CASE WHEN pg_temp.seed_u(%(seed)s, 114, m.id) >= 0.30
            THEN m.created_at + interval '2 days' * pg_temp.seed_u(%(seed)s, 115, m.id) END
FROM (
    SELECT k.id, k.a, k.b, pg_temp.seed_u(%(seed)s, 112, k.id) < 0.5 AS a_sends,
           pg_temp.seed_between(k.started, %(t1)s, (k.j + pg_temp.seed_u(%(seed)s, 113, k.id)) / k.n) AS created_at
    FROM (
        SELECT c.first_id + j AS id, j, c.n, p.a,
               mod(p.a - 1 + 1 + floor(pg_temp.seed_u(%(seed)s, 111, c.rank + %(rank_base)s) * (%(n_users)s - 1))::bigint,
                   %(n_users)s) + 1 AS b,
               pg_temp.seed_between(greatest(%(t0)s, pg_temp.seed_user_created(p.a, %(n_users)s, %(t0)s, %(t1)s)),
                                    %(t1)s, pg_temp.seed_u(%(seed)s, 116, c.rank + %(rank_base)s)) AS started
        FROM unnest(%(counts)s::int[], %(first_ids)s::bigint[]) WITH ORDINALITY AS c(n, first_id, rank)
        CROSS JOIN LATERAL (
            SELECT pg_temp.seed_perm(pg_temp.seed_pick(pg_temp.seed_u(%(seed)s, 110, c.rank + %(rank_base)s),
                                                       %(n_users)s), %(n_users)s, %(user_salt)s) AS a
        ) AS p
        CROSS JOIN LATERAL generate_series(0, c.n - 1) AS j
    ) AS k
) AS m
JOIN seed_sentences body ON body.id = (hashint8extended(m.id, %(seed)s::bigint * 1000 + 117) & 4095);

-- name: insert_intro_requests --
-- Builders ask popular investors for intros, 70%% about a project; half pending, 30%% accepted,
-- 20%% declined, answered within a week.
WITH investors AS (
    SELECT id, row_number() OVER (ORDER BY id) AS rn FROM users WHERE role = 'investor'
)
INSERT INTO intro_requests (id, requester_id, target_id, project_id, status, message,
                            created_at, responded_at)
SELECT r.id, r.requester_id, inv.id,
       CASE WHEN pg_temp.seed_u(%(seed)s, 122, r.id) < 0.7 THEN
           pg_temp.seed_perm(pg_temp.seed_pick(pg_temp.seed_u(%(seed)s, 123, r.id), %(n_projects)s),
                             %(n_projects)s, %(project_salt)s)
       END,
       r.status, msg.sentence, r.created_at,
       CASE WHEN r.status <> 'pending'
            THEN r.created_at + interval '7 days' * pg_temp.seed_u(%(seed)s, 124, r.id) END
FROM (
    SELECT id,
           pg_temp.seed_perm(pg_temp.seed_pick(pg_temp.seed_u(%(seed)s, 120, id), %(n_users)s),
                             %(n_users)s, %(user_salt)s) AS requester_id,
           pg_temp.seed_u(%(seed)s, 121, id) AS target_u,
           CASE WHEN pg_temp.seed_u(%(seed)s, 125, id) < 0.5 THEN 'pending'
                WHEN pg_temp.seed_u(%(seed)s, 125, id) < 0.8 THEN 'accepted'
                ELSE 'declined' END AS status,
           pg_temp.seed_between(%(t0)s, %(t1)s, pg_temp.seed_u(%(seed)s, 126, id)) AS created_at
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g(id)
) AS r
JOIN investors inv ON inv.rn = pg_temp.seed_pick(r.target_u, %(n_investors)s)
JOIN seed_sentences msg ON msg.id = (hashint8extended(r.id, %(seed)s::bigint * 1000 + 127) & 4095)
WHERE inv.id <> r.requester_id;

-- name: insert_investor_profiles --
INSERT INTO investor_profiles (user_id, firm, check_size_min, check_size_max, focus)
SELECT u.id,
       initcap(w.word) || ' ' || (ARRAY['Capital', 'Ventures', 'Partners', 'Labs Fund'])[1 + mod(u.id, 4)],
       min_size,
       min_size * (2 + mod(u.id, 9)),
       array_to_string(ARRAY(SELECT (%(tags)s::text[])[1 + floor(pg_temp.seed_u(%(seed)s, 131, u.id * 8 + k) * %(n_tags)s)::int]
                             FROM generate_series(1, 1 + mod(u.id, 3)) AS k), ', ')
FROM (
    SELECT id, (1 + floor(pg_temp.seed_u(%(seed)s, 130, id) * 100))::bigint * 25000 AS min_size
    FROM users WHERE role = 'investor' AND id BETWEEN %(lo)s AND %(hi)s
) AS u
JOIN seed_words w ON w.id = 1 + mod(u.id, %(n_words)s);

-- name: reset_identity --
-- After loading explicit ids, move the identity on so the app's own inserts do not collide.
SELECT setval(pg_get_serial_sequence(%(table)s, 'id'),
              greatest((SELECT max(id) FROM {table}), 1),
              (SELECT max(id) IS NOT NULL FROM {table}));
