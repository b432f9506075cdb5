# The tracking server alone: MLflow (with its basic-auth app), the PostgreSQL driver and the S3 client for an
# artifact store, on a slim image, not the multi-GB sweep image.
#   docker build -f docker/mlflow.Dockerfile -t sweep-mlflow:latest docker
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.44.5" \
 && useradd --create-home --uid 1000 --shell /bin/bash mlflow
USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000
ENTRYPOINT ["mlflow"]
