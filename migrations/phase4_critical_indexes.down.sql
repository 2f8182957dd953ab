-- opskit: no-transaction
-- Undo phase 4: drop its indexes without blocking reads or writes of the app tables.
DROP INDEX CONCURRENTLY IF EXISTS projects_owner_live_idx;
DROP INDEX CONCURRENTLY IF EXISTS projects_live_newest_idx;
DROP INDEX CONCURRENTLY IF EXISTS projects_chain_live_idx;
DROP INDEX CONCURRENTLY IF EXISTS votes_project_type_idx;
DROP INDEX CONCURRENTLY IF EXISTS votes_user_up_idx;
DROP INDEX CONCURRENTLY IF EXISTS comments_project_newest_idx;
DROP INDEX CONCURRENTLY IF EXISTS follows_followee_follower_idx;
DROP INDEX CONCURRENTLY IF EXISTS messages_recipient_unread_idx;
DROP INDEX CONCURRENTLY IF EXISTS messages_sender_partner_newest_idx;
DROP INDEX CONCURRENTLY IF EXISTS messages_recipient_partner_newest_idx;
DROP INDEX CONCURRENTLY IF EXISTS intro_requests_target_status_idx;
DROP INDEX CONCURRENTLY IF EXISTS intro_requests_requester_status_idx;
DROP INDEX CONCURRENTLY IF EXISTS users_investors_idx;
DROP INDEX CONCURRENTLY IF EXISTS chain_posts_chain_newest_idx;
DROP INDEX CONCURRENTLY IF EXISTS chain_post_replies_post_newest_idx;
DROP INDEX CONCURRENTLY IF EXISTS projects_title_trgm_idx;
DROP INDEX CONCURRENTLY IF EXISTS projects_tagline_trgm_idx;
DROP INDEX CONCURRENTLY IF EXISTS projects_tags_gin_idx;
DROP INDEX CONCURRENTLY IF EXISTS users_username_trgm_idx;
DROP INDEX CONCURRENTLY IF EXISTS users_display_name_trgm_idx;
DROP INDEX CONCURRENTLY IF EXISTS chains_name_trgm_idx;
DROP INDEX CONCURRENTLY IF EXISTS mv_search_index_popularity_idx;
DROP INDEX CONCURRENTLY IF EXISTS message_conversations_denorm_user_recent_idx;
DROP INDEX CONCURRENTLY IF EXISTS mv_feed_projects_newest_score_idx;
DROP INDEX CONCURRENTLY IF EXISTS mv_feed_projects_top_created_idx;
