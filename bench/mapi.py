"""The real ``mosaicml-cli`` 0.8.3's documents, verbatim (``reference/mapi.md`` sections 5.1
and 5.2): what the API's tests send, and what ``bench.api`` times."""

from __future__ import annotations

RUNS = """
query GetRunsPaginated($getRunsPaginatedData: GetRunsPaginatedInput!) {
  getRunsPaginated(getRunsPaginatedData: $getRunsPaginatedData) {
  cursor
  hasNextPage
  runs {
    id
    name
    status
    createdAt
    updatedAt
    reason
    createdByEmail
    priority
    maxRetries
    preemptible
    retryOnSystemFailure
    maxDurationSeconds
    isDeleted
    runType
    resumptions {
        clusterName
        cpus
        gpuType
        gpus
        nodes
        executionIndex
        startTime
        endTime
        status
        estimatedEndTime
        reason
    }
  }
  }
}"""
RUN_FIELDS = """
    id name createdByEmail status createdAt updatedAt reason priority maxRetries preemptible
    retryOnSystemFailure isDeleted runType
    resumptions { clusterName cpus gpuType gpus nodes executionIndex startTime endTime status }
"""
CREATE = f"""
mutation CreateRun($createRunData: CreateRunInput!) {{
  createRun(createRunData: $createRunData) {{
    {RUN_FIELDS}
    details {{ originalRunInput metadata lastExecutionId }}
  }}
}}"""
