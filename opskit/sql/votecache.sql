-- The database side of the Redis vote cache (docs/interface.md §8). Blocks are loaded by
-- opskit.sql.queries(). The truth is the votes table: a cached set holds the project ids a user
-- voted 'up' on (deleted projects included: the vote row still exists).

-- name: upvoted_projects_of_user --
SELECT project_id FROM votes WHERE user_id = %(user_id)s AND vote_type = 'up';

-- name: upvoted_projects_of_users --
-- One query for a whole batch of users (reconcile); users without upvotes give no row.
SELECT user_id, array_agg(project_id ORDER BY project_id)
FROM votes
WHERE user_id = ANY (%(user_ids)s) AND vote_type = 'up'
GROUP BY user_id;
