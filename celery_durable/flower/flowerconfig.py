"""A Flower config file enabling the durable views: ``celery flower --conf=<this file>``.

Flower executes it before it builds its application; any Flower option may follow (e.g.
``port = 5555``), or be given on the command line as usual.
"""

import celery_durable.flower

celery_durable.flower.install()
