from django.urls import path
from shop import views

urlpatterns = [
    path("notes/", views.create_note),
    path("jobs/<str:job_id>/", views.job_result),
]
