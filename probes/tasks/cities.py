"""Factual task ``cities``: statements that a real city lies in a country, true or false."""

from __future__ import annotations

import random

import pandas as pd

from probes.tasks._common import EXAMPLES_PER_TASK, HALF, _dealt_labels, _frame, _spread

# Real cities and their countries, from general knowledge.
COUNTRY_CITIES: dict[str, tuple[str, ...]] = {
    "France": (
        "Lyon",
        "Marseille",
        "Toulouse",
        "Bordeaux",
        "Lille",
        "Nantes",
        "Strasbourg",
        "Montpellier",
        "Rennes",
        "Grenoble",
        "Nice",
        "Dijon",
        "Reims",
    ),
    "Germany": (
        "Munich",
        "Hamburg",
        "Cologne",
        "Frankfurt",
        "Stuttgart",
        "Dresden",
        "Leipzig",
        "Dusseldorf",
        "Nuremberg",
        "Bremen",
        "Hanover",
        "Heidelberg",
        "Bonn",
    ),
    "Italy": (
        "Milan",
        "Naples",
        "Turin",
        "Florence",
        "Venice",
        "Bologna",
        "Palermo",
        "Genoa",
        "Verona",
        "Bari",
        "Pisa",
        "Siena",
        "Trieste",
    ),
    "Spain": (
        "Barcelona",
        "Seville",
        "Bilbao",
        "Malaga",
        "Zaragoza",
        "Alicante",
        "Pamplona",
        "Salamanca",
        "San Sebastian",
        "Cadiz",
        "Murcia",
        "Vigo",
    ),
    "Portugal": ("Lisbon", "Porto", "Coimbra", "Braga", "Faro", "Aveiro"),
    "the United Kingdom": (
        "Manchester",
        "Liverpool",
        "Edinburgh",
        "Glasgow",
        "Leeds",
        "Bristol",
        "Cardiff",
        "Belfast",
        "Sheffield",
        "Newcastle upon Tyne",
        "Nottingham",
        "Southampton",
        "Brighton",
    ),
    "Ireland": ("Dublin", "Cork", "Galway", "Limerick", "Waterford"),
    "the Netherlands": ("Amsterdam", "Rotterdam", "Utrecht", "Eindhoven", "Groningen", "Maastricht"),
    "Belgium": ("Brussels", "Antwerp", "Ghent", "Bruges", "Liege", "Leuven"),
    "Switzerland": ("Zurich", "Geneva", "Basel", "Bern", "Lausanne", "Lucerne"),
    "Austria": ("Vienna", "Salzburg", "Innsbruck", "Graz", "Linz"),
    "Poland": ("Warsaw", "Krakow", "Gdansk", "Wroclaw", "Poznan", "Lodz", "Lublin", "Szczecin", "Torun"),
    "the Czech Republic": ("Prague", "Brno", "Ostrava", "Pilsen", "Olomouc"),
    "Slovakia": ("Bratislava", "Kosice", "Zilina"),
    "Hungary": ("Budapest", "Debrecen", "Szeged", "Pecs"),
    "Romania": ("Bucharest", "Cluj-Napoca", "Timisoara", "Iasi", "Constanta"),
    "Bulgaria": ("Sofia", "Plovdiv", "Varna", "Burgas"),
    "Serbia": ("Belgrade", "Novi Sad", "Nis"),
    "Croatia": ("Zagreb", "Split", "Dubrovnik", "Rijeka"),
    "Greece": ("Athens", "Thessaloniki", "Patras", "Heraklion", "Larissa"),
    "Sweden": ("Stockholm", "Gothenburg", "Malmo", "Uppsala", "Linkoping"),
    "Norway": ("Oslo", "Bergen", "Trondheim", "Stavanger", "Tromso"),
    "Denmark": ("Copenhagen", "Aarhus", "Odense", "Aalborg"),
    "Finland": ("Helsinki", "Tampere", "Turku", "Oulu"),
    "Lithuania": ("Vilnius", "Kaunas", "Klaipeda"),
    "Russia": (
        "Moscow",
        "Saint Petersburg",
        "Novosibirsk",
        "Kazan",
        "Vladivostok",
        "Yekaterinburg",
        "Omsk",
        "Sochi",
        "Murmansk",
        "Irkutsk",
    ),
    "Ukraine": ("Kyiv", "Kharkiv", "Odesa", "Lviv", "Dnipro"),
    "Turkey": ("Istanbul", "Ankara", "Izmir", "Antalya", "Bursa", "Konya", "Trabzon", "Gaziantep"),
    "Israel": ("Tel Aviv", "Haifa", "Eilat"),
    "Saudi Arabia": ("Riyadh", "Jeddah", "Mecca", "Medina"),
    "the United Arab Emirates": ("Dubai", "Abu Dhabi", "Sharjah"),
    "Iran": ("Tehran", "Isfahan", "Shiraz", "Tabriz", "Mashhad"),
    "Iraq": ("Baghdad", "Basra", "Mosul", "Erbil"),
    "Egypt": ("Cairo", "Luxor", "Aswan", "Giza", "Port Said"),
    "Morocco": ("Casablanca", "Marrakesh", "Rabat", "Fez", "Tangier", "Agadir"),
    "Algeria": ("Algiers", "Oran", "Constantine"),
    "Tunisia": ("Tunis", "Sfax", "Sousse"),
    "Nigeria": ("Lagos", "Abuja", "Kano", "Ibadan", "Port Harcourt"),
    "Ghana": ("Accra", "Kumasi", "Tamale"),
    "Ethiopia": ("Addis Ababa", "Dire Dawa", "Gondar"),
    "Kenya": ("Nairobi", "Mombasa", "Kisumu", "Nakuru"),
    "Tanzania": ("Dar es Salaam", "Dodoma", "Arusha", "Zanzibar City"),
    "South Africa": ("Johannesburg", "Cape Town", "Durban", "Pretoria", "Port Elizabeth"),
    "India": (
        "Mumbai",
        "Delhi",
        "Bangalore",
        "Chennai",
        "Kolkata",
        "Jaipur",
        "Pune",
        "Ahmedabad",
        "Lucknow",
        "Varanasi",
        "Amritsar",
        "Agra",
        "Kochi",
    ),
    "Pakistan": ("Karachi", "Lahore", "Islamabad", "Peshawar", "Quetta"),
    "Bangladesh": ("Dhaka", "Chittagong", "Khulna", "Sylhet"),
    "Sri Lanka": ("Colombo", "Kandy", "Galle"),
    "Nepal": ("Kathmandu", "Pokhara"),
    "China": (
        "Shanghai",
        "Beijing",
        "Shenzhen",
        "Guangzhou",
        "Chengdu",
        "Wuhan",
        "Xi'an",
        "Hangzhou",
        "Nanjing",
        "Harbin",
        "Tianjin",
        "Chongqing",
        "Suzhou",
    ),
    "Japan": (
        "Tokyo",
        "Osaka",
        "Kyoto",
        "Nagoya",
        "Sapporo",
        "Hiroshima",
        "Fukuoka",
        "Kobe",
        "Yokohama",
        "Nagasaki",
        "Sendai",
        "Kanazawa",
        "Okayama",
    ),
    "South Korea": ("Seoul", "Busan", "Incheon", "Daegu", "Gwangju"),
    "Vietnam": ("Hanoi", "Ho Chi Minh City", "Da Nang", "Hue", "Haiphong"),
    "Thailand": ("Bangkok", "Chiang Mai", "Phuket", "Pattaya"),
    "Malaysia": ("Kuala Lumpur", "George Town", "Ipoh", "Kota Kinabalu"),
    "Indonesia": ("Jakarta", "Surabaya", "Bandung", "Medan", "Yogyakarta"),
    "the Philippines": ("Manila", "Cebu City", "Davao City", "Quezon City"),
    "Australia": (
        "Sydney",
        "Melbourne",
        "Brisbane",
        "Adelaide",
        "Canberra",
        "Hobart",
        "Darwin",
        "Gold Coast",
        "Cairns",
    ),
    "New Zealand": ("Auckland", "Wellington", "Christchurch", "Dunedin", "Rotorua"),
    "Canada": (
        "Toronto",
        "Montreal",
        "Vancouver",
        "Calgary",
        "Ottawa",
        "Quebec City",
        "Winnipeg",
        "Edmonton",
        "Regina",
        "Saskatoon",
    ),
    "the United States": (
        "Chicago",
        "Houston",
        "Boston",
        "Seattle",
        "Denver",
        "Miami",
        "San Francisco",
        "Los Angeles",
        "New Orleans",
        "Philadelphia",
        "Atlanta",
        "Detroit",
        "Las Vegas",
        "Phoenix",
    ),
    "Mexico": ("Guadalajara", "Monterrey", "Puebla", "Cancun", "Tijuana", "Oaxaca", "Acapulco"),
    "Cuba": ("Havana", "Santiago de Cuba", "Camaguey"),
    "Brazil": (
        "Rio de Janeiro",
        "Sao Paulo",
        "Salvador",
        "Brasilia",
        "Recife",
        "Manaus",
        "Fortaleza",
        "Porto Alegre",
        "Curitiba",
        "Belo Horizonte",
    ),
    "Argentina": ("Buenos Aires", "Rosario", "Mendoza", "La Plata", "Mar del Plata"),
    "Chile": ("Valparaiso", "Antofagasta", "Punta Arenas", "Vina del Mar"),
    "Peru": ("Lima", "Cusco", "Arequipa", "Iquitos"),
    "Colombia": ("Bogota", "Medellin", "Cali", "Barranquilla"),
    "Venezuela": ("Caracas", "Maracaibo", "Barquisimeto"),
    "Ecuador": ("Quito", "Guayaquil"),
    "Bolivia": ("Santa Cruz de la Sierra", "Cochabamba", "Sucre"),
}
# Well-known places of the same name in another listed country; never named in a false statement, so
# that none of them is accidentally true. (Names shared by two large cities, such as Cordoba, Valencia,
# Hyderabad or Perth, are left out of the list above altogether.)
NAMESAKES: dict[str, tuple[str, ...]] = {
    "Amsterdam": ("the United States",),
    "Athens": ("the United States",),
    "Bergen": ("the Netherlands",),
    "Boston": ("the United Kingdom",),
    "Brighton": ("Australia", "the United States"),
    "Bristol": ("the United States",),
    "Cairo": ("the United States",),
    "Christchurch": ("the United Kingdom",),
    "Dublin": ("the United States",),
    "Dunedin": ("the United States",),
    "Edmonton": ("the United Kingdom",),
    "Florence": ("the United States",),
    "Geneva": ("the United States",),
    "Gold Coast": ("Ghana",),
    "Guadalajara": ("Spain",),
    "Hamburg": ("the United States",),
    "Hanover": ("the United States",),
    "Kochi": ("Japan",),
    "Lagos": ("Portugal",),
    "Lima": ("the United States",),
    "Liverpool": ("Australia",),
    "Los Angeles": ("Chile",),
    "Manchester": ("the United States",),
    "Medina": ("the United States",),
    "Melbourne": ("the United States",),
    "Moscow": ("the United States",),
    "Naples": ("the United States",),
    "Ottawa": ("the United States",),
    "Pamplona": ("Colombia",),
    "Rotterdam": ("the United States",),
    "Saint Petersburg": ("the United States",),
    "Salamanca": ("Mexico",),
    "San Francisco": ("Argentina",),
    "San Sebastian": ("Argentina", "Mexico", "Chile"),
    "Southampton": ("the United States",),
    "Sydney": ("Canada",),
    "Vancouver": ("the United States",),
    "Venice": ("the United States",),
    "Vienna": ("the United States",),
    "Warsaw": ("the United States",),
    "Waterford": ("the United States",),
    "Wellington": ("South Africa", "the United Kingdom", "the United States"),
}
CITY_TEMPLATES = (
    "The city of {city} is in {country}.",
    "{city} is a city in {country}.",
    "{city} is located in {country}.",
    "{city} lies in {country}.",
)


def _city_statement(template: str, city: str, country: str) -> str:
    if city.endswith(" City") and template.startswith("The city of"):
        template = "{city} is in {country}."  # not "The city of Quebec City"
    return template.format(city=city, country=country)


def generate(seed: int) -> pd.DataFrame:
    """Each of 400 drawn cities appears once, and each row names one of the countries of those cities.

    Labels are dealt at random over the named countries, and the cities left after the true statements
    go to the false ones (never naming their own country). So, country by country, true and false rows
    split as under a random shuffle of the labels: neither the country named nor the city's real country
    carries the label. (Exactly equal counts per country would not do: with a few rows per country, each
    country would then predict the *opposite* label on held-out folds.)
    """
    rng = random.Random(seed)
    pairs = [(city, country) for country, cities in COUNTRY_CITIES.items() for city in cities]
    chosen = rng.sample(pairs, EXAMPLES_PER_TASK)
    named = [country for _, country in chosen]
    labels = _dealt_labels(rng)
    unused = {country: [city for city, c in chosen if c == country] for country in COUNTRY_CITIES}
    cities: list[str] = [unused[country].pop() if label else "" for country, label in zip(named, labels)]
    left = [city for country in COUNTRY_CITIES for city in unused[country]]
    country_of = dict(pairs)
    false_slots = [i for i, label in enumerate(labels) if not label]
    rng.shuffle(left)

    def fits(city: str, slot: int) -> bool:
        return named[slot] != country_of[city] and named[slot] not in NAMESAKES.get(city, ())

    for k, slot in enumerate(false_slots):  # repair clashes by swaps that keep both rows valid
        if not fits(left[k], slot):
            m = next(m for m in rng.sample(range(HALF), HALF) if fits(left[m], slot) and fits(left[k], false_slots[m]))
            left[k], left[m] = left[m], left[k]
    for k, slot in enumerate(false_slots):
        cities[slot] = left[k]
    templates = _spread(CITY_TEMPLATES, rng)
    rows = [
        (_city_statement(template, city, country), label, city, country)
        for template, city, country, label in zip(templates, cities, named, labels)
    ]
    return _frame(rows, ["text", "label", "city", "country"], rng)
