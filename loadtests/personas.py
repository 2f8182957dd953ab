"""The personas of the load tests: who uses the app and what they do, with how often.

Every id, token and search term comes from the run's fixture (`opskit.benchmarking.loadtest` reads them from
the seeded database before the run), never from constants. Each task sends exactly one request
(its intended send time belongs to that request) and names it by its route template, so both
modes' runs group requests the same way. A scenario file imports the personas it runs.
"""

from __future__ import annotations

from locust import task

from opskit.benchmarking.locust_user import FIXTURE, PacedUser

FEED_PAGES, FEED_PAGE_WEIGHTS = (1, 2, 3), (6, 3, 1)  # most visitors never scroll far
VOTE_TYPES = ("up", "up", "up", "down", "none")  # upvotes dominate; "none" withdraws a vote


class BrowsingVisitor(PacedUser):
    """Someone without an account: the feed in every sort, projects, leaderboards, chains,
    search with real and misspelled words, the investor directory."""

    weight = 4  # in the mixed scenario: four visitors for every signed-in builder

    def _feed(self, sort: str) -> None:
        page = self.rng.choices(FEED_PAGES, FEED_PAGE_WEIGHTS)[0]
        self.client.get(f"/api/projects?sort={sort}&page={page}", name=f"/api/projects?sort={sort}")

    @task(6)
    def feed_trending(self) -> None:
        self._feed("trending")

    @task(3)
    def feed_newest(self) -> None:
        self._feed("newest")

    @task(2)
    def feed_top(self) -> None:
        self._feed("top")

    @task(6)
    def project_page(self) -> None:
        project_id = self.rng.choice(FIXTURE["project_ids"])
        self.client.get(f"/api/projects/{project_id}", name="/api/projects/{id}")

    @task(2)
    def leaderboard_projects(self) -> None:
        self.client.get("/api/leaderboard/projects")

    @task(2)
    def leaderboard_builders(self) -> None:
        self.client.get("/api/leaderboard/builders")

    @task(2)
    def chains(self) -> None:
        self.client.get("/api/chains")

    @task(2)
    def chain_posts(self) -> None:
        slug = self.rng.choice(FIXTURE["chain_slugs"])
        self.client.get(f"/api/chains/{slug}/posts", name="/api/chains/{slug}/posts")

    @task(2)
    def search(self) -> None:
        term = self.rng.choice(FIXTURE["search_terms"])
        self.client.get("/api/search", params={"q": term}, name="/api/search")

    @task(1)
    def search_misspelled(self) -> None:
        term = self.rng.choice(FIXTURE["misspelled_terms"])
        self.client.get("/api/search", params={"q": term}, name="/api/search")

    @task(1)
    def investors(self) -> None:
        self.client.get("/api/investors")


class SignedInBuilder(PacedUser):
    """A builder signed in as a real seeded user: dashboard, conversations, intro stats, the
    personalised feed, votes and messages."""

    weight = 1

    def on_start(self) -> None:
        account = self.rng.choice(FIXTURE["users"])
        self.user_id = account["id"]
        self.peers = account["peers"]  # never empty, never themselves (see the fixture)
        self.auth = {"Authorization": f"Bearer {account['token']}"}
        super().on_start()

    @task(5)
    def dashboard_stats(self) -> None:
        self.client.get("/api/users/stats", headers=self.auth)

    @task(3)
    def conversations(self) -> None:
        self.client.get("/api/messages/conversations", headers=self.auth)

    @task(2)
    def intro_stats(self) -> None:
        self.client.get("/api/intros/stats", headers=self.auth)

    @task(3)
    def feed_signed_in(self) -> None:
        # Signed-in feed items carry has_upvoted (the vote cache in after mode): its own name.
        self.client.get(
            "/api/projects?sort=trending",
            headers=self.auth,
            name="/api/projects?sort=trending [signed in]",
        )

    @task(2)
    def project_page(self) -> None:
        project_id = self.rng.choice(FIXTURE["project_ids"])
        self.client.get(f"/api/projects/{project_id}", headers=self.auth, name="/api/projects/{id}")

    @task(3)
    def vote(self) -> None:
        body = {
            "project_id": self.rng.choice(FIXTURE["project_ids"]),
            "vote_type": self.rng.choice(VOTE_TYPES),
        }
        self.client.post("/api/votes", json=body, headers=self.auth)

    @task(1)
    def send_message(self) -> None:
        body = {"recipient_id": self.rng.choice(self.peers), "body": "Saw your demo, let's talk."}
        self.client.post("/api/messages", json=body, headers=self.auth)

    @task(1)
    def mark_read(self) -> None:
        other = self.rng.choice(self.peers)
        self.client.post(
            f"/api/messages/{other}/read",
            headers=self.auth,
            name="/api/messages/{other_user_id}/read",
        )
