"""The controller's rules, callable without HTTP.

Each module is one concern (accounts, groups, connector groups, ...). Its
functions take an ``AsyncSession`` (inside a transaction the caller opened:
``Database.read()`` or ``ControllerState.mutation``) and typed, already
validated inputs (the request models of :mod:`zerogate.controller.schemas`),
and return ORM rows or small typed results. Auditing, config revisions and
HTTP are the caller's business (see :mod:`zerogate.controller.api`).

Errors: the controller's :class:`~zerogate.controller.state.ApiProblem`
subclasses, each with a message a user can act on: ``NotFound`` (a named
object does not exist), ``Conflict`` (a name in use, an overlap, or an object
still referenced) and ``Unprocessable`` (a request that cannot be applied as
asked). The caller maps them to 404, 409 and 422.
"""
