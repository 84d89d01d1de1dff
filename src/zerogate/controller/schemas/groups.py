"""User groups and changes to their member lists (``/v1/groups``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, model_validator

from zerogate.controller.fields import Description, ObjectName, Username
from zerogate.controller.schemas.base import Strict


class GroupCreate(Strict):
    name: ObjectName
    description: Description = ""
    members: list[Username] = Field(default_factory=list, max_length=100000)


class GroupUpdate(Strict):
    description: Description | None = None
    members: list[Username] | None = Field(default=None, max_length=100000)


class GroupOut(BaseModel):
    id: int
    name: str
    description: str
    members: list[str]
    created_at: datetime


class GroupMembersChange(Strict):
    """PATCH /v1/groups/{name}/members: a change to the member list, not the whole list."""

    add: list[Username] = Field(default_factory=list, max_length=100000, description="Users to add.")
    remove: list[Username] = Field(default_factory=list, max_length=100000, description="Users to remove.")

    @model_validator(mode="after")
    def _meaningful(self) -> GroupMembersChange:
        if not self.add and not self.remove:
            raise ValueError("nothing to change: give usernames in 'add' and/or 'remove'")
        both = set(self.add) & set(self.remove)
        if both:
            # Positions, not the names: an error never echoes the request back.
            where = ", ".join([f"add[{i}]" for i, n in enumerate(self.add) if n in both][:5])
            raise ValueError(f"a user cannot be both added and removed ({where}); leave it out of one list")
        return self


class GroupMembersChanged(BaseModel):
    name: str
    added: list[str] = Field(description="Users that became members (already members are not listed).")
    removed: list[str] = Field(description="Users that stopped being members (non-members are not listed).")
    member_count: int = Field(description="How many members the group has now.")
