"""The admin REST API: one thin router per resource.

Each module holds its resource's :class:`~.crud.Resource` (registered by
:func:`~.crud.crud_routes`: list, show, create, update, delete) and only its
own extra routes; the rules live in :mod:`zerogate.controller.services`. No
router imports another; the shared HTTP pieces (the ``Admin`` and ``State``
dependencies) come from :mod:`zerogate.controller.auth`. ``app.py`` includes
the routers (the OpenAPI document lists paths in that order).
"""
