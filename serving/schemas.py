"""Request and response bodies of the HTTP API (they also make its OpenAPI document).

Ids are strings on the wire; integers are accepted and turned into strings, since MovieLens-style ids are
often sent as numbers (`{"user_id": 42}`). Unknown fields are refused: a misspelt `exclude_seen` must not be
silently ignored. Limits that come from the spec (`serving.limits`) are checked by the API layer, because
they are settings of the deployment, not of the schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    model_validator,
)

MAX_ID_LENGTH = 256
SCORE_KINDS = {"ranking": "ranking_score", "ctr": "probability", "rating": "rating"}  # task -> /v1/score's `score`


def _as_id(value: Any) -> str:
    """A string id, or an integer written as one; anything else (null, bool, float, list) is refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):  # ValueError, not TypeError: pydantic reports only ValueErrors as field errors
        raise ValueError(f"ids are strings or integers, got {type(value).__name__}")  # noqa: TRY004
    if not value or len(value) > MAX_ID_LENGTH:
        raise ValueError(f"ids are 1..{MAX_ID_LENGTH} characters, got {len(value)}")
    if not value.isascii():
        try:  # JSON's "\ud800" decodes to a lone surrogate, which no UTF-8 consumer (hashing, Parquet) can take
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("ids must be valid Unicode text: a lone UTF-16 surrogate (\\ud800-\\udfff) is "
                             "not") from None
    return value


# The OpenAPI document says what `_as_id` accepts, so clients and fuzzers see the length limits.
Id = Annotated[str, BeforeValidator(_as_id), WithJsonSchema({
    "anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}, {"type": "integer"}],
    "description": f"An id: a string of 1..{MAX_ID_LENGTH} characters (valid Unicode), or an integer."})]
NEED_USER = "give user_id or history (or both)"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _UserQuery(_Body):
    user_id: Id | None = Field(None, description="A user the model version knows (its history is stored in the "
                                                 "artifact); unknown users without a history get popular items.")
    history: list[Id] | None = Field(
        None, description="Item ids the user interacted with, oldest first; overrides the stored history.")

    @model_validator(mode="after")
    def _someone(self) -> _UserQuery:
        if self.user_id is None and self.history is None:
            raise ValueError(NEED_USER)
        return self


class RecommendRequest(_UserQuery):
    k: StrictInt = Field(10, ge=1, description="How many items to return (at most serving.limits.maxK).")
    # Strict like `k`: "no", 0 or "false" are refused rather than read as a boolean (false would be silently
    # recommending seen items; "no" being truthy-or-not is a guess the API must not make).
    exclude_seen: StrictBool = Field(True, description="Leave out the items of the history (JSON true/false).")
    candidates: list[Id] | None = Field(
        None, min_length=1, description="Rank only these item ids (re-ranking a retrieval stage's output).")


class ScoreRequest(_UserQuery):
    item_ids: list[Id] = Field(min_length=1, description="Items to score for the user.")


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    title: str


REQUEST_ID_DOC = ("This answer's id (also the X-Request-Id header): name it, with model_version, in the feedback "
                  "events (POST /v1/events) about what it showed.")


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]
    model_version: str
    request_id: str = Field(description=REQUEST_ID_DOC)
    fallback: Literal["popularity"] | None = Field(
        None, description="Set when the model could not be used (no history): the ranking is by popularity.")


class ScoredItem(BaseModel):
    item_id: str
    score: float


class ScoreResponse(BaseModel):
    scores: list[ScoredItem]
    score: Literal["ranking_score", "probability", "rating", "popularity"] = Field(
        description="What the numbers are: a two-tower dot product, a click probability (ctr), a rating, or "
                    "the share of users who interacted with the item (popularity fallback).")
    model_version: str
    request_id: str = Field(description=REQUEST_ID_DOC)
    fallback: Literal["popularity"] | None = None


class ErrorResponse(BaseModel):
    error: str
    field: str | None = None


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    ready: bool
    versions: dict[str, bool] = Field(description="Each version with traffic: does it answer?")


class ModelResponse(BaseModel):
    name: str
    versions: list[dict[str, Any]] = Field(description="Every deployed version: weight, task, encoders, fusion "
                                                       "weights, test metrics, replica; `available: false` when "
                                                       "none of its replicas answered.")
