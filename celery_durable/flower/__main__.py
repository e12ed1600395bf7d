"""``python -m celery_durable.flower`` prints the path of the shipped Flower config file."""

from celery_durable.flower import CONF_PATH

print(CONF_PATH)
